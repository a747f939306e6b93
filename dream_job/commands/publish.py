"""Verb `publish`: push a run's export (and its eval report, in the model card) to the job's destinations."""

from __future__ import annotations

from typing import Annotated

import typer

from dream_job.commands.failures import guarded
from dream_job.commands.options import SetOpt, SpecArg
from dream_job.spec import load_spec


@guarded
def publish(
    spec: SpecArg,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Publish over a destination holding another run.")] = False,
) -> None:
    """Upload the run's model to every `artifacts.destinations` entry and verify each file; skipped when done.

    Example: `dream-job publish jobs/smoke.yaml --set 'artifacts.destinations=["file:///tmp/smoke"]'`
    """
    from dream_job.errors import ArtifactError
    from dream_job.pipeline import publish_stage
    from dream_job.progress import stage_line, stderr
    from dream_job.rundir import EXPORT_DIR, export_digest, locked_run_dir

    job = load_spec(spec, set_)
    if not job.artifacts.destinations:
        raise ArtifactError(f"`artifacts.destinations` in `{spec}` is empty: nowhere to publish",
                            hint="add one, e.g. `--set 'artifacts.destinations=[\"file:///tmp/models\"]'`")
    if export_digest(job.run_dir() / EXPORT_DIR) is None:  # complete exports only
        raise ArtifactError(f"no complete exported model in `{job.run_dir() / EXPORT_DIR}`",
                            hint=f"train it first: `dream-job train {spec}` (or `dream-job run {spec}`)")
    with locked_run_dir(job.run_dir(), verb="dream-job publish"):
        outcome = publish_stage(job, verb="dream-job publish", force=force)
    stderr.print(stage_line(outcome), highlight=False, soft_wrap=True)
