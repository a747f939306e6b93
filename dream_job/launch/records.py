"""Launch records: one JSON file per launched run, so `logs` and `status` find it by run id or job.

`~/.dream-job/launches/<run_id>.json` (the folder moves with `DREAM_JOB_HOME`), written
atomically after SkyPilot accepted the job: run id, job, mode, SkyPilot name and job id, offer,
caps and run dir. Never a secret value.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from dream_job.rundir import write_text_atomically
from dream_job.launch.plan import LaunchError, LaunchPlan


def launches_dir() -> Path:
    """Return the folder of launch records (`$DREAM_JOB_HOME/launches`, default `~/.dream-job/launches`)."""
    return Path(os.environ.get("DREAM_JOB_HOME") or Path.home() / ".dream-job") / "launches"


def save_record(plan: LaunchPlan, job_id: int | None, launched_at: str) -> dict[str, Any]:
    """Write the record of a launched run and return it."""
    record = {
        "run_id": plan.run_id, "job": plan.job, "job_file": plan.job_file, "mode": plan.mode,
        "sky_name": plan.sky_name, "job_id": job_id, "accelerators": plan.accelerators, "cloud": plan.cloud,
        "infra": plan.infra, "instance_type": plan.instance_type, "spot": plan.spot,
        "usd_per_hour": plan.usd_per_hour, "guard_usd_per_hour": plan.guard_usd_per_hour,
        "budget_hours": plan.budget_hours,
        "hard_limit_min": plan.hard_limit_min, "run_dir": plan.run_dir, "destinations": list(plan.destinations),
        "secrets": list(plan.secrets), "launched_at": launched_at,
    }
    write_text_atomically(launches_dir() / f"{plan.run_id}.json", json.dumps(record, indent=2) + "\n")
    return record


def _records() -> list[dict[str, Any]]:
    folder = launches_dir()
    found = [json.loads(p.read_text(encoding="utf-8")) for p in folder.glob("*.json")] if folder.is_dir() else []
    return sorted(found, key=lambda r: r["launched_at"])


def latest_for_job(job: str) -> dict[str, Any] | None:
    """Return the newest record of job `job` (a spec name), or None."""
    matching = [r for r in _records() if r["job"] == job]
    return matching[-1] if matching else None


def find_record(target: str) -> dict[str, Any]:
    """Return the record of run id `target`, or the newest one of the job file `target`.

    Raises:
        LaunchError: No such launch from this machine (names the known run ids).
    """
    if target.endswith((".yaml", ".yml")):
        from dream_job.spec import load_spec

        record = latest_for_job(load_spec(target, None).name)
    else:
        record = next((r for r in _records() if r["run_id"] == target), None)
    if record is None:
        known = ", ".join(f"`{r['run_id']}`" for r in _records()[-5:]) or "none"
        raise LaunchError(f"no launch of `{target}` recorded in `{launches_dir()}`",
                          hint=f"launch it with `dream-job launch JOB.yaml`; runs launched here: {known}")
    return record
