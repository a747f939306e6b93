"""Paste `dream-job estimate`'s launch line into SkyPilot's own CLI and compare with `dream-job launch`'s task.

Runs in the sky venv (see `tests/tools/sky_env.py`) with the repo as working dir and on
PYTHONPATH, `HOME` in a temp folder with seeded catalogs (which `budget.estimate` reads too):

    python line_probe.py JOB.yaml --clouds aws,lambda,runpod,vast [--set K=V ...] [--now YYYY-MM-DD]

For the job it
1. plans as `dream-job estimate` does (`dream_job.launch.preview`): the estimate's choice and
   the printed `sky ...` line;
2. runs that line through SkyPilot 0.14.1's real click command (`sky launch` / `sky jobs launch`),
   with only the final SDK submit replaced by a recorder: argument parsing, `--infra`
   resolution, the YAML load with env and secret overrides and the resources override are
   SkyPilot's;
3. builds the task `dream-job launch` submits (`dream_job.launch.sky_api.build_task`);
4. asks SkyPilot's optimizer (clouds faked as enabled, as SkyPilot's own tests do) what each
   task would run on.

Prints one `SKY_PROBE_RESULT {json}` line with the choice, the line, both tasks' summaries and
both optimizer picks; a `DreamJobError` prints `error: ...` on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sky_probe import RESULT_MARK, enable_clouds


class Submitted(Exception):
    """Raised by the recorder in place of SkyPilot's SDK submit: the CLI stops there."""

    def __init__(self, task: Any, kwargs: dict[str, Any]) -> None:
        super().__init__("submitted")
        self.task, self.kwargs = task, kwargs


def _from_cli(line: str) -> tuple[Any, dict[str, Any]]:
    """Run the `sky ...` line through SkyPilot's click CLI; return the task it would submit and the call's kwargs."""
    from sky.client.cli import command

    def record_launch(task: Any, *args: Any, **kwargs: Any) -> Any:
        raise Submitted(task, kwargs)

    def record_jobs_launch(dag: Any, *args: Any, **kwargs: Any) -> Any:
        raise Submitted(dag.tasks[0], {"name": dag.name, **kwargs})

    command.sdk.launch = record_launch
    command.managed_jobs.launch = record_jobs_launch
    argv = shlex.split(line)
    while "=" in argv[0]:  # `SKYPILOT_PROJECT_CONFIG=... sky jobs launch ...`: the shell's environment for `sky`
        key, _, value = argv.pop(0).partition("=")
        os.environ[key] = value
        from sky import skypilot_config

        skypilot_config.reload_config()
    assert argv[0] == "sky", argv
    try:
        command.cli.main(argv[1:] + ["--yes"], prog_name="sky", standalone_mode=False)
    except Submitted as done:
        return done.task, done.kwargs
    raise AssertionError(f"SkyPilot's CLI did not submit `{line}`")


def _summary(task: Any) -> dict[str, Any]:
    return {
        "name": task.name,
        "resources": sorted({json.dumps(r.to_yaml_config(), sort_keys=True, default=str) for r in task.resources}),
        "envs": dict(task.envs),
        "secrets": {k: v.get_secret_value() for k, v in task.secrets.items()},
        "storage_mounts": sorted(task.storage_mounts),
        "file_mounts": task.file_mounts,
        "workdir": task.workdir,
        "setup": task.setup,
        "run": task.run,
    }


def _optimize(task: Any) -> dict[str, Any]:
    import sky
    from sky import optimizer

    task.set_storage_mounts({})  # bucket existence cannot be checked offline
    with sky.Dag() as dag:
        dag.add(task)
    best = optimizer.Optimizer.optimize(dag, minimize=sky.OptimizeTarget.COST, quiet=True).tasks[0].best_resources
    return {"cloud": str(best.cloud).lower(), "instance_type": best.instance_type, "region": best.region,
            "zone": best.zone, "use_spot": best.use_spot, "usd_per_hour": round(best.get_cost(3600), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job")
    parser.add_argument("--clouds", required=True)
    parser.add_argument("--set", dest="sets", action="append", default=[])
    parser.add_argument("--now", default="2026-11-24")
    args = parser.parse_args()

    from dream_job.errors import DreamJobError
    from dream_job.launch import preview, sky_api
    from dream_job.spec import load_spec

    enable_clouds(args.clouds.split(","))
    now = datetime.fromisoformat(args.now).replace(hour=12, tzinfo=UTC)
    try:
        result, plan = preview(load_spec(args.job, args.sets), Path(args.job), task_yaml=Path("sky.yaml"),
                               data_report=None, now=now)
    except DreamJobError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        raise SystemExit(1) from None
    assert plan is not None
    line = plan.sky_command()
    cli_task, cli_kwargs = _from_cli(line)
    ours = sky_api.build_task(plan, os.environ)
    choice = result.choice
    out = {
        "choice": {"cloud": choice.cloud, "instance_type": choice.instance_type, "region": choice.region,
                   "zone": choice.zone, "spot": choice.spot, "usd_per_hour": choice.usd_per_hour,
                   "gpu": choice.gpu, "count": choice.count, "vram_gib": choice.vram_gib},
        "mode": plan.mode, "line": line, "cli": _summary(cli_task), "launch": _summary(ours),
        "cli_kwargs": {k: str(getattr(v, "value", v)) for k, v in cli_kwargs.items()
                       if k in ("name", "cluster_name", "idle_minutes_to_autostop", "down", "wait_for")},
        "launch_kwargs": {k: str(getattr(v, "value", v)) for k, v in sky_api.autostop_kwargs(plan).items()},
        "cli_pick": _optimize(cli_task), "launch_pick": _optimize(ours),
    }
    print(RESULT_MARK + json.dumps(out, default=str))


if __name__ == "__main__":
    main()
