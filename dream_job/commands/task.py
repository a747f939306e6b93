"""Verb `task`: what sky.yaml's `run` script runs on each node of a launched job."""

from __future__ import annotations

from dream_job.commands.failures import guarded, require_container


@guarded
def task() -> None:
    """Run this SkyPilot task on this node: the job the launch priced, under its caps (sky.yaml's `run`).

    Checks the carried spec against `DREAM_JOB_SPEC_SHA256`, counts this start and the wall clock
    where the run's state lives, then runs `dream-job run` until it ends or the cap stops it.
    See docs/recovery.md. Example (on the machine): `dream-job task`
    """
    from dream_job.launch.task import run_task

    require_container()
    code = run_task()
    if code:
        raise SystemExit(code)  # `dream-job run` said why; not an error of this verb (`guarded` would call it a bug)
