"""The resolved job as it travels with a task: canonical YAML text, its sha256, and the check on arrival.

The estimate prices one `JobSpec` (the job file plus every `--set`) on one offer; `priced_spec`
resolves what the estimate resolved for that offer (`train.save_every_steps: auto`). The launcher
puts that spec's YAML text into the task's envs (`DREAM_JOB_SPEC`, in the derived task file) and its digest on the
printed line (`--env DREAM_JOB_SPEC_SHA256=...`, short enough to read). On the machine,
`read_payload` refuses text whose digest differs, so the run is exactly the priced job, whatever
job files the image or the workdir hold. No torch, no SkyPilot.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import yaml

from dream_job.errors import InputError
from dream_job.spec import JobSpec

SPEC_ENV = "DREAM_JOB_SPEC"
SPEC_DIGEST_ENV = "DREAM_JOB_SPEC_SHA256"


class PayloadError(InputError):
    """The spec that reached the machine is missing or differs from the digest the launch printed (exit 1)."""


def priced_spec(spec: JobSpec, save_every_steps: int) -> JobSpec:
    """Return the job as priced on an offer: `train.save_every_steps: auto` replaced by the offer's interval.

    `auto` uploads every checkpoint it saves (`train_hooks.sync_checkpoint`), so where the job syncs
    checkpoints at all, it syncs at the resolved interval too: the machine saves and uploads what the
    estimate counted. A fixed interval, or none resolved (0), leaves the job as it is.
    """
    if spec.train.save_every_steps != "auto" or save_every_steps < 1:
        return spec
    artifacts = spec.artifacts
    if artifacts.sync_every_steps is not None:
        artifacts = artifacts.model_copy(update={"sync_every_steps": save_every_steps})
    train = spec.train.model_copy(update={"save_every_steps": save_every_steps})
    return spec.model_copy(update={"train": train, "artifacts": artifacts})


def spec_text(spec: JobSpec) -> str:
    """Return the canonical YAML text of `spec`: every field resolved, keys sorted, so equal specs give equal text."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=True, allow_unicode=True, width=1000)


def spec_digest(text: str) -> str:
    """Return the sha256 hex digest of `text` (UTF-8), as printed on the launch line."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_payload(environ: Mapping[str, str]) -> str | None:
    """Return the spec text the task carries, checked against its digest; None when the task carries none.

    A task without `DREAM_JOB_SPEC` and `DREAM_JOB_SPEC_SHA256` (a hand-written `sky launch sky.yaml
    --env JOB=...`) runs its job file instead; one without the other is refused.

    Raises:
        PayloadError: Only one of the two is set, or the text's digest differs from the one printed.
    """
    text, expected = environ.get(SPEC_ENV), environ.get(SPEC_DIGEST_ENV)
    if not text and not expected:
        return None
    if not text:
        raise PayloadError(f"`{SPEC_DIGEST_ENV}` is set but the task carries no `{SPEC_ENV}`, so the job that was "
                           "priced did not reach this machine",
                           hint="launch with the task file the estimate's line names (`.dream-job/<run id>.yaml`), "
                                "not `sky.yaml`")
    if not expected:
        raise PayloadError(f"the task carries `{SPEC_ENV}` without `{SPEC_DIGEST_ENV}`, so it cannot be checked "
                           "against what was priced",
                           hint="launch with the line `dream-job estimate` prints (it passes the digest)")
    got = spec_digest(text)
    if got != expected.strip().lower():
        raise PayloadError(f"the job that reached this machine (sha256 {got[:12]}...) is not the one that was "
                           f"priced (`{SPEC_DIGEST_ENV}={expected[:12]}...`); nothing was run",
                           hint="estimate again and launch with the new line, without editing its task file")
    return text
