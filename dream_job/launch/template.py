"""The SkyPilot task template (`sky.yaml`) and the files a launch derives from it.

Input: the template, read as plain YAML (no SkyPilot import), and a `LaunchPlan`. Output: the
template adapted to the plan's cloud (keys a cloud cannot take left out, `DROPPED_FOR_CLOUD`),
written with the resolved job to the run's own task file `.dream-job/<run id>.yaml` (the newest
`KEEP_TASK_FILES` are kept), and the SkyPilot project config that places a managed job's
controller. Also the run bucket the template mounts, and what to say when none is set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from budget.catalog import NO_FUSE_CLOUDS
from budget.controller import controller_config
from dream_job.launch.payload import SPEC_ENV
from dream_job.launch.plan import LaunchError, LaunchPlan
from dream_job.rundir import write_text_atomically

# Every estimate writes a task file for its run id; the newest this many stay, so the lines of the
# last estimates still paste (SkyPilot reads the file only at launch) and older ones do not pile up.
KEEP_TASK_FILES = 20
TASK_FILE_HEADER = "# Derived from `"
# The task env naming the run bucket (`sky.yaml`'s `/runs` mount), and the user's own setting for it.
RUNS_BUCKET_ENV = "RUNS_BUCKET"
RUNS_BUCKET_SETTING = "DREAM_JOB_RUNS_BUCKET"
# What the estimate's line says while no bucket is set: not a valid bucket name, so SkyPilot refuses
# the pasted line at once (StorageNameError) instead of creating a bucket nobody chose.
BUCKET_PLACEHOLDER = "<your-new-bucket>"
# What a cloud cannot take from the template, and why (SkyPilot 0.14.1).
DROPPED_FOR_CLOUD = {
    "file_mounts": ("no FUSE, so no bucket mount: the run dir stays on the machine's disk and "
                    "`artifacts.destinations` carry the results"),
    f"envs.{RUNS_BUCKET_ENV}": "no bucket mount, so no run bucket to name",
    "resources.image_id": ("SkyPilot logs in to a RunPod pod as root, which a non-root image refuses (its RunPod "
                           "user setting is rejected by the API server): RunPod's own image runs and `setup` installs "
                           "the project"),
}


def dropped_for(cloud: str) -> tuple[str, ...]:
    """Return the template keys a launch on `cloud` must leave out (see `DROPPED_FOR_CLOUD`)."""
    keys = ("file_mounts", f"envs.{RUNS_BUCKET_ENV}") if cloud in NO_FUSE_CLOUDS else ()
    return keys + (("resources.image_id",) if cloud == "runpod" else ())


def no_bucket_sentence(cloud: str) -> str:
    """Tell a user without a run bucket what to set (one sentence, before anything is provisioned)."""
    return (f"no run bucket is set: on `{cloud}` the run dir lives on an S3 bucket of your own, named before "
            f"launching (bucket names are global, so none is shipped); SkyPilot creates it: `export "
            f"{RUNS_BUCKET_SETTING}=dream-job-runs-<your name>`, or pass `--env {RUNS_BUCKET_ENV}=<name>`")


def read_template(path: Path) -> dict[str, Any]:
    """Return the SkyPilot task template as a dict (plain YAML, no SkyPilot).

    Raises:
        LaunchError: The file is missing or is not a YAML mapping.
    """
    if not path.is_file():
        raise LaunchError(f"SkyPilot task template `{path}` not found",
                          hint="run from the repo root (it holds `sky.yaml`) or pass `--sky-yaml PATH`")
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(config, dict):
        raise LaunchError(f"SkyPilot task template `{path}` is not a YAML mapping",
                          hint="restore it from the repo: `git checkout sky.yaml`")
    return config


def runs_mount(template: dict[str, Any], envs: Mapping[str, str]) -> tuple[str, str] | None:
    """Return (mount path, `s3://bucket`) of the template's first S3 bucket mount, env vars filled in."""
    for path, mount in (template.get("file_mounts") or {}).items():
        if isinstance(mount, dict) and mount.get("store") == "s3" and mount.get("name"):
            name = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: envs.get(m.group(1) or m.group(2), m.group(0)),
                          str(mount["name"]))
            return str(path), f"s3://{name}"
    return None


def template_has(template: dict[str, Any], key: str) -> bool:
    """Return whether the template sets `key` (`a.b` names a key inside `a`), even to null."""
    head, _, rest = key.partition(".")
    value = template.get(head)
    return (isinstance(value, dict) and rest in value) if rest else head in template


def template_value(template: dict[str, Any], key: str) -> Any:
    """Return the template's value at `key` (`a.b` names a key inside `a`), None when absent."""
    head, _, rest = key.partition(".")
    value = template.get(head)
    return (value.get(rest) if isinstance(value, dict) else None) if rest else value


def derived_template(template: dict[str, Any], dropped: tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of `template` without the `dropped` keys (`a.b` names a key inside `a`)."""
    body = {k: (dict(v) if isinstance(v, dict) else v) for k, v in template.items()}
    for key in dropped:
        head, _, rest = key.partition(".")
        if rest and isinstance(body.get(head), dict):
            body[head].pop(rest, None)
        elif not rest:
            body.pop(head, None)
    return body


def write_project_config(plan: LaunchPlan) -> None:
    """Write the SkyPilot project config that places the plan's jobs controller (atomically)."""
    path = plan.project_config()
    if path is None or plan.controller is None:
        return
    write_text_atomically(path, "# Written by dream-job: where SkyPilot places the jobs controller of a managed job "
                          "(`budget.controller_infra`, `budget.controller_instance_type`); regenerated on every "
                          "estimate and launch.\n" + yaml.safe_dump(controller_config(plan.controller),
                                                                    sort_keys=False))


def write_derived_template(template: dict[str, Any], plan: LaunchPlan) -> None:
    """Write the template adapted to the plan's cloud, carrying the resolved job, to `plan.task_file()` (atomically)."""
    body = derived_template(template, plan.dropped)
    body["envs"] = {**(body.get("envs") or {}), SPEC_ENV: plan.spec_yaml}  # checked against the line's digest
    write_text_atomically(plan.task_file(), f"{TASK_FILE_HEADER}{plan.task_yaml}` by dream-job for `{plan.cloud}` "
                          f"(left out: {', '.join(plan.dropped) or 'nothing'}) for run `{plan.run_id}`; written by "
                          "every estimate and launch: edit the source instead.\n"
                          + yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=1000))
    prune_task_files(plan.task_file().parent, keep=KEEP_TASK_FILES)


def prune_task_files(folder: Path, *, keep: int) -> list[Path]:
    """Delete all but the `keep` newest task files dream-job wrote in `folder`; return those deleted.

    Only files named like a run id (`<job>-<yyyymmdd-HHMMSS>.yaml`) that start with dream-job's header
    are touched; the controller's project config and anything else in the folder stay.
    """
    ours = [path for path in folder.glob("*.yaml") if re.fullmatch(r"[a-z][a-z0-9-]*-\d{8}-\d{6}", path.stem)
            and path.read_text(encoding="utf-8").startswith(TASK_FILE_HEADER)]
    ours.sort(key=lambda path: (path.stat().st_mtime, path.name), reverse=True)
    for path in ours[keep:]:
        path.unlink(missing_ok=True)
    return ours[keep:]
