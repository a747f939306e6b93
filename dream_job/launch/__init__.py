"""`dream-job launch`, `logs` and `status` of a launched run: from the estimate to a SkyPilot job.

Public API (the CLI verbs call these; SkyPilot is imported only by `sky_api`, lazily):
- `plan_launch(spec, spec_path, task_yaml=..., mode=..., spot=...) -> LaunchPlan`: estimate and
  decide (offer, managed or cluster, caps, envs, secret names); checks secrets; provisions nothing.
- `preview(spec, spec_path, task_yaml=...) -> (Estimate, LaunchPlan | None)`: what `dream-job
  estimate` shows: the plan's estimate and its `sky` line (`LaunchPlan.sky_command()`).
- `launch(plan, dryrun=...) -> dict`: build the task from the template, hand it to SkyPilot, write
  the launch record (`records.py`) and return it.
- `find_record(target)`, `launch_status(record, run_dir=...)`, `follow_logs(record, follow=...)`.

Modules: `planner` (`plan_launch` and the checks before it), `plan` (the `LaunchPlan` value and how it
reads), `template` (`sky.yaml` and the task file and controller config derived from it; these three import
no SkyPilot, no torch), `sky_api` (SkyPilot), `records` (launch records),
`payload` (the resolved job the task carries, and its digest), `image` (the user's image or none),
`task` (`dream-job task`, the machine's side: the carried job, caps, start count).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dream_job.costs import spent_yuan
from dream_job.launch.plan import INSTALL_HINT, LaunchError, LaunchPlan
from dream_job.launch.planner import plan_launch
from dream_job.launch.records import find_record, latest_for_job, launches_dir, save_record
from dream_job.rundir import COST_NAME
from dream_job.spec import JobSpec

__all__ = ["INSTALL_HINT", "LaunchError", "LaunchPlan", "find_record", "follow_logs", "latest_for_job", "launch",
           "launch_status", "launches_dir", "plan_launch", "preview", "require_skypilot", "status_lines"]


def preview(spec: JobSpec, spec_path: Path, *, task_yaml: Path,
            **estimate_kwargs: Any) -> tuple[Any, LaunchPlan | None]:
    """Return the estimate and, when `task_yaml` is here, the launch plan `dream-job launch` would make.

    The estimate is the plan's own (same offer, same mode), so the printed `sky` line and the
    choice box describe one launch. Secrets are named, not required; old prices are flagged.

    Raises:
        BudgetError: From the estimate (`NoOfferError` when nothing fits).
        LaunchError: The job cannot be launched as planned (job file outside the working
            directory, a pick that outlasts the `BUDGET_HOURS` its budget buys).
    """
    if not task_yaml.is_file():
        from budget import estimate

        return estimate(spec, **{"data_report": None, **estimate_kwargs}), None
    plan = plan_launch(spec, spec_path, task_yaml=task_yaml, for_launch=False, **estimate_kwargs)
    return plan.estimate, plan


def require_skypilot() -> None:
    """Raise `LaunchError` (with the install hint) when SkyPilot cannot be imported here."""
    from dream_job.launch.sky_api import import_sky

    import_sky()


def launch(plan: LaunchPlan, *, dryrun: bool = False, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Build the SkyPilot task for `plan`, launch it and record the launch.

    Writes `<launches_dir>/<run_id>.json` after SkyPilot accepted the job (not on a dry run).

    Returns:
        The launch record (`job_id` None on a dry run).

    Raises:
        LaunchError: SkyPilot is missing or rejects the task.
    """
    from dream_job.launch import sky_api

    environ = os.environ if environ is None else environ
    task = sky_api.build_task(plan, environ)
    launched_at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    job_id = sky_api.submit(task, plan, dryrun=dryrun)
    if dryrun:
        return {"run_id": plan.run_id, "job_id": None, "dryrun": True}
    return save_record(plan, job_id, launched_at)


def _read_cost(run_dir: str) -> dict[str, Any] | None:
    """Return the run's `cost.json` from a local folder or `s3://bucket/prefix`, None when absent."""
    if run_dir.startswith("s3://"):
        from dream_job.artifacts.s3 import S3Store

        bucket, _, prefix = run_dir[len("s3://"):].partition("/")
        text = S3Store(bucket, prefix).read_text(COST_NAME)
    else:
        path = Path(run_dir) / COST_NAME
        text = path.read_text(encoding="utf-8") if path.is_file() else None
    return json.loads(text) if text else None


def launch_status(record: Mapping[str, Any], *, run_dir: str | None = None) -> dict[str, Any]:
    """Return SkyPilot's view of a launched run plus its spend from `cost.json` when the run dir is reachable.

    Args:
        record: The launch record (`find_record`).
        run_dir: Where the run dir can be read (a local folder, e.g. a bucket mounted on the
            laptop, or `s3://bucket/prefix`); default the record's.

    Returns:
        `{run_id, mode, sky_name, job_id, state, recoveries, failure, spent_yuan, budget_yuan,
        spend_note, run_dir, next}` where `next` is the command to run now.

    Raises:
        LaunchError: SkyPilot is missing or cannot answer.
    """
    from dream_job.launch import sky_api

    state = sky_api.job_state(record)
    where = run_dir or record.get("run_dir")
    spent = budget = None
    note = "run dir not recorded (the run dir is on the machine's disk)"
    if where:
        try:
            cost = _read_cost(where)
        except Exception as exc:  # unreachable bucket, no credentials, no boto3: spend is optional
            cost, note = None, f"`{where}` not reachable: {type(exc).__name__}: {exc}"
        else:
            note = "" if cost else f"no `cost.json` in `{where}` yet (the job has not started training)"
        if cost:
            spent, budget = round(spent_yuan(cost["started_at"], cost["usd_per_hour"], cost["cny_per_usd"],
                                             until=state["ended_at"]), 2), cost.get("budget_yuan")
    terminal = state["state"] in sky_api.TERMINAL
    if state["state"] == "SUCCEEDED" and record.get("destinations"):
        follow_up = f"dream-job pull {record['destinations'][0]} ./{record['job']}"
    elif record["mode"] == "cluster" and (terminal or state["state"] == "cluster down"):
        follow_up = f"sky down {record['sky_name']}" if state["state"] != "cluster down" else ""
    else:
        follow_up = f"dream-job logs {record['run_id']}" if not terminal else ""
    return {"run_id": record["run_id"], "mode": record["mode"], "sky_name": record["sky_name"],
            "job_id": record["job_id"], "state": state["state"], "recoveries": state["recoveries"],
            "failure": state["failure"], "spent_yuan": spent, "budget_yuan": budget, "spend_note": note,
            "run_dir": where, "next": follow_up}


def status_lines(status: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Return (what, value) rows for `launch_status`'s result."""
    if "error" in status:
        return [("launch", status["error"])]
    recoveries = "-" if status["recoveries"] is None else str(status["recoveries"])
    spent = (f"¥{status['spent_yuan']:.2f}" + (f" of ¥{status['budget_yuan']:g}" if status["budget_yuan"] else "")
             if status["spent_yuan"] is not None else status["spend_note"])
    rows = [("launch", f"`{status['run_id']}`: {status['mode']} `{status['sky_name']}`, SkyPilot job "
             f"{status['job_id']}"), ("state", str(status["state"])), ("recoveries", recoveries), ("spent", spent)]
    if status["failure"]:
        rows.append(("failure", str(status["failure"])))
    if status["next"]:
        rows.append(("next", f"`{status['next']}`"))
    return rows


def follow_logs(record: Mapping[str, Any], *, follow: bool = True) -> int:
    """Stream the run's logs (SkyPilot's) to stdout until the job ends; return its exit code."""
    from dream_job.launch import sky_api

    return sky_api.tail_logs(record, follow=follow)
