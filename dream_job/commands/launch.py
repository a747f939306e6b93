"""Verbs `launch` and `logs`: from the estimate to a SkyPilot job, and its log lines (status: `train.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dream_job.commands.failures import guarded
from dream_job.commands.options import ReportOpt, SetOpt, SkyYamlOpt, SpecArg
from dream_job.spec import load_spec

TargetArg = Annotated[str, typer.Argument(help="Job file (its local run, else its newest launch) or a run id "
                                          "printed by `dream-job launch`.", metavar="JOB_FILE|RUN_ID")]
ModeOpt = Annotated[bool | None, typer.Option(
    "--managed/--cluster", help="`sky jobs launch` (recovers from preemption) or `sky launch`; default: managed for "
    "spot offers, else `budget.managed_job`.")]
SpotOpt = Annotated[bool, typer.Option("--spot", help="Only spot offers.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Launch without asking.")]
DryrunOpt = Annotated[bool, typer.Option("--dryrun", help="Let SkyPilot choose the machine; provision nothing.")]
EnvOpt = Annotated[list[str] | None, typer.Option("--env", help="Task env `K=V`, e.g. `RUNS_BUCKET=my-runs` "
                                                  "(repeatable).")]
SecretOpt = Annotated[list[str] | None, typer.Option("--secret", help="Another secret NAME the job needs, from this "
                                                     "shell's environment (repeatable).")]
# SkyPilot's `tail_logs` exit codes that mean "no failure": succeeded, still running (`--no-follow`).
_OK_CODES = (0, 101)


@guarded
def launch(spec: SpecArg, set_: SetOpt = None, managed: ModeOpt = None, spot: SpotOpt = False, yes: YesOpt = False,
           dryrun: DryrunOpt = False, env: EnvOpt = None, secret: SecretOpt = None,
           sky_yaml: SkyYamlOpt = Path("sky.yaml"), data_report: ReportOpt = None) -> None:
    """Estimate, show the choice and its cost, ask, then launch the job with SkyPilot; prints the run id.

    Example: `dream-job launch jobs/dream-s1k.yaml --env RUNS_BUCKET=my-runs`, then `dream-job logs <run id>`
    """
    from budget import load_data_report
    from dream_job.launch import LaunchError, plan_launch, require_skypilot
    from dream_job.launch import launch as submit
    from dream_job.progress import estimate_tables, stderr

    require_skypilot()
    mode = None if managed is None else ("managed" if managed else "cluster")
    plan = plan_launch(load_spec(spec, set_), Path(spec), task_yaml=sky_yaml, mode=mode, spot=spot, envs=env,
                       secrets=secret, data_report=load_data_report(data_report) if data_report else None)
    stderr.print(estimate_tables(plan.estimate)[0])
    for what, value in plan.lines():
        stderr.print(f"{what}: {value}", highlight=False, soft_wrap=True)
    try:
        confirmed = yes or dryrun or typer.confirm("launch?", default=False, err=True)
    except typer.Abort:
        confirmed = False
    if not confirmed:
        raise LaunchError("not launched: the prompt was declined", hint="pass `--yes` to launch without asking")
    record = submit(plan, dryrun=dryrun)
    stderr.print("dry run: nothing was provisioned" if dryrun else f"launched; follow it with `dream-job logs "
                 f"{plan.run_id}` and `dream-job status {plan.run_id}`", highlight=False, soft_wrap=True)
    print(record["run_id"])


@guarded
def logs(target: TargetArg, follow: Annotated[bool, typer.Option("--follow/--no-follow")] = True,
         launched: Annotated[bool, typer.Option("--launched", help="For a job file: its newest launch, even when "
                                                "a local run has a log.")] = False,
         set_: SetOpt = None) -> None:
    """Print a run's log lines (step loss grad_norm lr tok/s mfu mem eta ¥) and follow them until it ends.

    A job file shows its local run's `logs/train.log` (`--set artifacts.run_dir=...` picks another), or
    its newest launch when it has no local log; a run id shows that launch's SkyPilot log.

    Example: `dream-job logs jobs/smoke.yaml`, or `dream-job logs dream-s1k-20261124-120000`
    """
    from dream_job.errors import InputError
    from dream_job.launch import LaunchError, find_record, follow_logs, latest_for_job
    from dream_job.logtail import follow_lines, run_dir_is_busy, train_log_path

    if target.endswith((".yaml", ".yml")) and not launched:
        job = load_spec(target, set_)
        log = train_log_path(job.run_dir())
        if log.is_file() or latest_for_job(job.name) is None:
            if not log.is_file() and not run_dir_is_busy(job.run_dir())():
                raise InputError(f"no log yet: `{log}` does not exist and `{job.name}` was never launched from here",
                                 path=log, hint=f"start it: `dream-job run {target}` (or `dream-job launch {target}`)")
            for line in follow_lines(log, follow=follow, is_running=run_dir_is_busy(job.run_dir())):
                print(line, flush=True)
            return
    record = find_record(target)
    code = follow_logs(record, follow=follow)
    if code not in _OK_CODES:
        raise LaunchError(f"run `{record['run_id']}` did not succeed (SkyPilot's exit code {code})",
                          hint=f"see its state and spend: `dream-job status {record['run_id']}`")
