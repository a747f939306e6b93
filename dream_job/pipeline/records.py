"""Stage records as the pipeline writes them: `running` at the start, the outcome at the end; what a stage did."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeGuard

from dream_job import rundir
from dream_job.errors import EXIT_INTERRUPTED, EXIT_TRANSIENT, DreamJobError
from dream_job.rundir import DONE, FAILED, INTERRUPTED, RUNNING, StageRecord


STAGES = ("prep", "train", "eval", "publish")


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one stage in this invocation.

    Attributes:
        stage: The stage name (or `preflight`).
        skipped: True when it had finished before on the same fingerprint.
        summary: Small facts for the status line.
        outcome: The record's outcome (`done`, `stopped_by_budget`, ...).
        reason: Why it stopped early, when it did.
    """

    stage: str
    skipped: bool
    summary: dict[str, Any]
    outcome: str = DONE
    reason: str | None = None


def is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


@contextmanager
def recording(run_dir: Path, stage: str, fingerprint: str, inputs: dict[str, Any], verb: str,
               *, write: bool = True) -> Iterator[dict[str, Any]]:
    """Write `running` now and `failed`/`interrupted` if the body raises; the body writes the end itself."""
    started = rundir.now_utc()
    base = StageRecord(stage=stage, fingerprint=fingerprint, inputs=inputs, outcome=RUNNING, verb=verb,
                       started_at=started)
    if write:
        rundir.write_stage_record(run_dir, base)
    try:
        yield {"base": base}
    except BaseException as exc:
        if write:
            interrupted = isinstance(exc, KeyboardInterrupt) or getattr(exc, "exit_code", None) in (
                EXIT_TRANSIENT, EXIT_INTERRUPTED)
            reason = exc.message if isinstance(exc, DreamJobError) else (
                "stopped by Ctrl-C" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}")
            try:
                rundir.write_stage_record(run_dir, replace(base, outcome=INTERRUPTED if interrupted else FAILED,
                                                           reason=reason, finished_at=rundir.now_utc()))
            except DreamJobError:
                pass  # the disk may be full: the original error says more
        raise


def finish_record(run_dir: Path, base: StageRecord, *, outcome: str = DONE, output_digest: str | None,
            summary: dict[str, Any], reason: str | None = None, write: bool = True) -> StageRecord:
    record = replace(base, outcome=outcome, output_digest=output_digest, summary=summary, reason=reason,
                     finished_at=rundir.now_utc())
    if write:
        rundir.write_stage_record(run_dir, record)
    return record


def can_skip(record: StageRecord | None, fingerprint: str) -> TypeGuard[StageRecord]:
    """Return whether `record` is a finished run of the stage on the same fingerprint (and so not None)."""
    return record is not None and record.is_done and record.fingerprint == fingerprint


def skipped_outcome(record: StageRecord) -> StageOutcome:
    return StageOutcome(record.stage, True, record.summary or {}, record.outcome, record.reason)
