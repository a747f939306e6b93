"""Verbs that run the job in the container: `train`, `run`, `status`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from dream_job.cli import JsonOpt, SetOpt, SpecArg, app, guarded
from dream_job.spec import load_spec


@app.command()
@guarded
def train(spec: SpecArg = "jobs/smoke.yaml", set_: SetOpt = None) -> None:
    """Train on the prepared data, resuming from the newest complete checkpoint; export at the end.

    Example: `dream-job train jobs/smoke.yaml`; on N GPUs:
    `torchrun --nproc_per_node N -m dream_job train jobs/dream-s1k.yaml`
    """
    from dream_job.progress import stderr
    from dream_job.train.loop import train as run_training

    result = run_training(load_spec(spec, set_))
    if os.environ.get("RANK", "0") == "0":
        stderr.print(f"trained {result.steps} steps, final loss {result.final_loss:.4f}; model: {result.export_dir}",
                     highlight=False)


@app.command()
@guarded
def run(
    spec: SpecArg = "jobs/smoke.yaml",
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Publish over a destination holding another run.")] = False,
) -> None:
    """Run the whole job: preflight, prep, train, eval, publish; finished stages are skipped.

    Example: `dream-job run jobs/smoke.yaml`
    """
    from dream_job.pipeline import run_pipeline
    from dream_job.progress import stage_line, stderr

    job = load_spec(spec, set_)
    run_pipeline(job, spec_path=Path(spec), overrides=list(set_ or []), force=force,
                 on_stage=lambda outcome: stderr.print(stage_line(outcome), highlight=False))


@app.command()
@guarded
def status(spec: SpecArg = "jobs/smoke.yaml", set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """Show a run's stages, training step, loss, spend and destinations.

    Example: `dream-job status jobs/dream-s1k.yaml --set artifacts.run_dir=/mnt/runs/abc`
    """
    import json

    from dream_job.pipeline import run_status
    from dream_job.progress import status_table, stdout

    result = run_status(load_spec(spec, set_))
    if as_json:
        print(json.dumps(result, indent=2))
        return
    stdout.print(status_table(result))
