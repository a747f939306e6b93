"""Run `dream-job launch`'s library path with SkyPilot 0.14.1, offline, up to SkyPilot's dry run.

Runs in the sky venv (see `tests/tools/sky_env.py`) with the repo as working dir and on
PYTHONPATH, `HOME` in a temp folder with seeded catalogs (`budget.estimate` reads them too):

    python launch_probe.py JOB.yaml --clouds lambda,runpod [--mode managed|cluster] [--spot]
        [--set K=V ...] [--env K=V ...] [--dryrun]

`dream_job.launch.plan_launch` estimates and plans; `dream_job.launch.launch` builds the task
from `sky.yaml` and calls SkyPilot's client SDK. The SDK calls are recorded and answered in
process, as SkyPilot's own tests route them to the server code: each task handed to
`sky.launch` or `sky.jobs.launch` goes through `sky.execution.launch(task, dryrun=True)` with the
clouds faked as enabled (the optimizer picks the machine, nothing is provisioned). S3 bucket
mounts cannot be checked offline (SkyPilot asks AWS about the bucket), so they are recorded,
then removed before the dry run.

Prints one `SKY_PROBE_RESULT {json}` line: the SDK calls (function, name, the task's resources,
envs, secret names, whether each secret value equals this environment's, storage mounts, and
the dry run's chosen machine), the plan's rows and the launch record; a `DreamJobError` prints
`error: ...` to stderr, still prints the result (with the calls made so far) and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from sky_probe import RESULT_MARK, enable_clouds

CALLS: list[dict[str, Any]] = []


def _summary(task: Any) -> dict[str, Any]:
    return {
        "resources": sorted((r.to_yaml_config() for r in task.resources), key=lambda r: json.dumps(r, default=str)),
        "envs": dict(task.envs),
        "secret_names": sorted(task.secrets),
        "secrets_match_environment": all(v.get_secret_value() == os.environ.get(k) for k, v in task.secrets.items()),
        "secret_refs": sorted(ref.name for ref in task.managed_secret_refs),
        "storage_mounts": {path: {"name": s.name, "mode": s.mode.value} for path, s in task.storage_mounts.items()},
    }


def _dry_run(task: Any, cluster_name: str) -> dict[str, Any]:
    import sky
    from sky import execution, optimizer

    task.set_storage_mounts({})
    execution.launch(task, cluster_name=cluster_name, dryrun=True, _quiet_optimizer=True)
    # The dry run optimizes a copy of the task (admin policies); ask the optimizer what it chose.
    with sky.Dag() as dag:
        dag.add(task)
    best = optimizer.Optimizer.optimize(dag, minimize=sky.OptimizeTarget.COST, quiet=True).tasks[0].best_resources
    return {"cloud": str(best.cloud), "instance_type": best.instance_type, "accelerators": best.accelerators,
            "use_spot": best.use_spot, "usd_per_hour": round(best.get_cost(3600), 4)}


def _route_sdk_in_process() -> None:
    import sky

    def launch(task: Any, cluster_name: str | None = None, dryrun: bool = False, **kwargs: Any) -> Any:
        call = {"function": "sky.launch", "name": cluster_name, "dryrun": dryrun, "kwargs": sorted(kwargs),
                "autostop": {k: str(getattr(kwargs[k], "value", kwargs[k])) for k in
                             ("idle_minutes_to_autostop", "down", "wait_for") if k in kwargs},
                "task": _summary(task)}
        CALLS.append(call)
        call["dry_run_choice"] = _dry_run(task, cluster_name or "probe")
        return (None if dryrun else 1, None)

    def jobs_launch(task: Any, name: str | None = None, **kwargs: Any) -> Any:
        call = {"function": "sky.jobs.launch", "name": name, "kwargs": sorted(kwargs), "task": _summary(task)}
        CALLS.append(call)
        call["dry_run_choice"] = _dry_run(task, name or "probe")
        return ([7], None)

    sky.launch = launch
    sky.jobs.launch = jobs_launch
    sky.stream_and_get = lambda request_id, *args, **kwargs: request_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job")
    parser.add_argument("--clouds", required=True)
    parser.add_argument("--mode", choices=["managed", "cluster"])
    parser.add_argument("--spot", action="store_true")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--dryrun", action="store_true")
    args = parser.parse_args()

    from dream_job.errors import DreamJobError
    from dream_job.launch import launch, plan_launch
    from dream_job.spec import load_spec

    enable_clouds(args.clouds.split(","))
    _route_sdk_in_process()
    result: dict[str, Any] = {"calls": CALLS}
    try:
        plan = plan_launch(load_spec(args.job, args.sets), Path(args.job), task_yaml=Path("sky.yaml"),
                           mode=args.mode, spot=args.spot, envs=args.env)
        result["plan"] = {"mode": plan.mode, "run_id": plan.run_id, "hard_limit_min": plan.hard_limit_min,
                          "budget_hours": plan.budget_hours, "lines": plan.lines()}
        result["record"] = launch(plan, dryrun=args.dryrun)
    except DreamJobError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        for cause in exc.caused_by:
            print(f"  caused by: {cause}", file=sys.stderr)
        print(RESULT_MARK + json.dumps(result, default=str))
        raise SystemExit(1) from None
    print(RESULT_MARK + json.dumps(result, default=str))


if __name__ == "__main__":
    main()
