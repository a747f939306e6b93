"""`dream-job status`: a run's state read from its run dir (stage records, last step, checkpoints, spend)."""

from __future__ import annotations

from typing import Any

from dream_job import rundir
from dream_job.errors import InputError
from dream_job.pipeline.records import STAGES
from dream_job.rundir import DONE, INTERRUPTED, RUNNING, read_stage_record, run_id
from dream_job.spec import JobSpec


def run_status(spec: JobSpec, *, must_exist: bool = True) -> dict[str, Any]:
    """Collect a run's state from its run dir: stage records, last logged step, checkpoints, spend.

    Reads only (no lock, no repair): a torn last line of `metrics.jsonl` is skipped.

    Args:
        must_exist: Refuse a run dir that does not exist (False: a launched run, whose dir is remote).

    Raises:
        InputError: The run dir is a file, or (with `must_exist`) does not exist.
    """
    run_dir = spec.run_dir()
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"run dir `{run_dir}` is a file, not a folder", key="artifacts.run_dir", path=run_dir,
                         hint="point `artifacts.run_dir` at the run's folder")
    if must_exist and not run_dir.exists():
        raise InputError(f"run dir `{run_dir}` does not exist: nothing of job `{spec.name}` has run there",
                         key="artifacts.run_dir", path=run_dir,
                         hint="check `artifacts.run_dir` (and the `--set` options the run used), or start the run "
                              "with `dream-job run`")
    holder = rundir.lock_holder(run_dir) if run_dir.is_dir() else None
    stages: dict[str, dict[str, Any] | None] = {}
    for name in STAGES:
        record = read_stage_record(run_dir, name)
        if record is None:
            stages[name] = None
            continue
        outcome = record.outcome
        if outcome == RUNNING and holder is None:
            outcome = INTERRUPTED  # nobody holds the lock: the process that ran it is gone
        stages[name] = {"outcome": outcome, "finished_at": record.finished_at, "started_at": record.started_at,
                        "reason": record.reason or ("its process ended without finishing" if outcome == INTERRUPTED
                                                    and record.outcome == RUNNING else None),
                        "verb": record.verb, "summary": record.summary or {}}
    metrics = rundir.read_jsonl(run_dir / rundir.LOGS_DIR / rundir.METRICS_NAME)
    last = metrics[-1] if metrics else {}
    checkpoints = [path.name for _, path in rundir.complete_checkpoints(run_dir / rundir.CHECKPOINTS_DIR)]
    info_path = run_dir / rundir.RUN_INFO_NAME
    run_info = rundir.read_json(info_path, fix=f"delete `{info_path}`: `dream-job run` writes it again"
                                ) if info_path.is_file() else {}
    return {
        "run_dir": str(run_dir),
        "run_id": run_info.get("run_id") or run_id(spec),
        "in_use_by": holder,
        "stages": stages,
        "stopped": _why_stopped(stages),
        "step": last.get("step"),
        "loss": last.get("train/loss"),
        "spent_yuan": last.get("cost/spent_yuan"),
        "latest_checkpoint": checkpoints[-1] if checkpoints else None,
        "destinations": list(spec.artifacts.destinations),
    }


def _why_stopped(stages: dict[str, dict[str, Any] | None]) -> str | None:
    """Return why the run is not finished, from the first stage that did not end `done`."""
    for name, stage in stages.items():
        if stage is None:
            return f"stage {name} has not run yet"
        if stage["outcome"] != DONE:
            what = stage["outcome"].replace("_", " ")
            return f"stage {name} {what}" + (f": {stage['reason']}" if stage.get("reason") else "")
    return None
