"""Verbs that run the job in the container: `train`, `run`, `status`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from dream_job.commands.failures import guarded, require_container
from dream_job.commands.options import JsonOpt, SetOpt, SpecArg
from dream_job.spec import load_spec


@guarded
def train(spec: SpecArg, set_: SetOpt = None) -> None:
    """Train on the prepared data, resuming from the newest complete checkpoint; export at the end.

    Example: `dream-job train jobs/smoke.yaml`; on N GPUs:
    `torchrun --nproc_per_node N -m dream_job train jobs/dream-s1k.yaml`
    """
    from contextlib import nullcontext

    from dream_job.pipeline import train_stage
    from dream_job.progress import stderr
    from dream_job.rundir import locked_run_dir

    require_container()
    job, rank0 = load_spec(spec, set_), os.environ.get("RANK", "0") == "0"
    with locked_run_dir(job.run_dir(), verb="dream-job train") if rank0 else nullcontext():
        result, outcome = train_stage(job, verb="dream-job train", skip_done=False)
    if rank0:
        held_out = f", validation loss {result.val_loss:.4g}" if result.val_loss is not None else ""
        stderr.print(f"trained {result.steps} of {result.total_steps} steps, final loss {result.final_loss:.4g}"
                     f"{held_out}; model: {result.export_dir}" + (f"\n{outcome.reason}" if outcome.reason else ""),
                     highlight=False)


@guarded
def run(
    spec: SpecArg,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Publish over a destination holding another run.")] = False,
) -> None:
    """Run the whole job: preflight, prep, train, eval, publish; finished stages are skipped.

    Example: `dream-job run jobs/smoke.yaml`
    """
    from dream_job.pipeline import run_pipeline
    from dream_job.progress import stage_line, stderr

    require_container()
    job = load_spec(spec, set_)
    run_pipeline(job, spec_path=Path(spec), overrides=list(set_ or []), force=force,
                 on_stage=lambda outcome: stderr.print(stage_line(outcome), highlight=False))


@guarded
def status(
    target: Annotated[str, typer.Argument(help="Job file (its run dir) or a run id from `dream-job launch`.",
                                          metavar="JOB_FILE|RUN_ID", show_default=False)],
    set_: SetOpt = None,
    as_json: JsonOpt = False,
    run_dir: Annotated[str | None, typer.Option("--run-dir", help="Where a launched run's dir can be read (a "
                                                "mounted folder or `s3://bucket/run id`).")] = None,
) -> None:
    """Show a run's stages, training step, loss, spend and destinations; for a launched run, SkyPilot's state too.

    Example: `dream-job status jobs/dream-s1k.yaml --set artifacts.run_dir=/mnt/runs/abc`, or
    `dream-job status dream-s1k-20261124-120000` (state, recoveries, spend so far)
    """
    import json

    from dream_job.launch import LaunchError, find_record, latest_for_job, launch_status, status_lines
    from dream_job.pipeline import run_status
    from dream_job.progress import status_table, stdout

    is_job = target.endswith((".yaml", ".yml"))
    job = load_spec(target, set_) if is_job else None
    record = (None if set_ else latest_for_job(job.name)) if job is not None else find_record(target)
    # A launched run's dir lives on its machine (or bucket): only a local run must have one here.
    result = run_status(job, must_exist=record is None) if job is not None else {}
    if record is not None:
        try:
            result["launch"] = launch_status(record, run_dir=run_dir)
        except LaunchError as exc:
            if not is_job:
                raise
            result["launch"] = {"error": f"SkyPilot state of `{record['run_id']}` unavailable: {exc.message}"}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    if is_job:
        stdout.print(status_table(result))
    for what, value in status_lines(result["launch"]) if record is not None else []:
        stdout.print(f"{what}: {value}", highlight=False, soft_wrap=True)
