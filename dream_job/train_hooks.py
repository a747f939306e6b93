"""The concrete hooks the pipeline gives the trainer: live view, budget guard, checkpoint sync.

`dream_job/train/` imports nothing above itself; this module (above both `train/` and the
pieces it wires: `progress`, `costs`, `artifacts`) builds a `TrainHooks` for one run on this
process. The trainer calls the hooks on rank 0 only.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from dream_job.rundir import run_id
from dream_job.spec import JobSpec
from dream_job.train.hooks import TrainHooks

logger = logging.getLogger(__name__)


def train_hooks(spec: JobSpec) -> TrainHooks:
    """Return the hooks for training `spec`: the terminal view, the budget guard and checkpoint sync.

    Only rank 0 (`RANK` unset or `0`) gets a budget guard: it alone reads and writes `cost.json`.

    Args:
        spec: The job spec; its run id (`rundir.run_id`) names the run's folder at the destinations.
    """
    from dream_job.progress import TrainingView

    rank0 = os.environ.get("RANK", "0") == "0"
    run = run_id(spec)
    syncing = spec.artifacts.sync_every_steps is not None and bool(sync_targets(spec))
    return TrainHooks(
        display=TrainingView(),
        cost_guard=CostGuardOnFirstUse(spec) if rank0 else None,
        after_save=(lambda folder, step, final: sync_checkpoint(spec, run, folder, step, final=final))
        if syncing else None,
        fetch_checkpoint=(lambda root: fetch_synced_checkpoint(spec, run, root)) if syncing else None,
    )


class CostGuardOnFirstUse:
    """The run's `CostTracker`, opened when the trainer first asks (after the model is built).

    Opening writes `cost.json` with the run's start time; a `train` that fails before (no prepared
    data, a bad setting) must not start the clock.
    """

    def __init__(self, spec: JobSpec) -> None:
        self._spec = spec
        self._tracker: Any = None

    def _costs(self) -> Any:
        if self._tracker is None:
            from dream_job.costs import open_costs

            self._tracker = open_costs(self._spec)
        return self._tracker

    @property
    def usd_per_hour(self) -> float | None:
        """The machine's price in USD per hour (0 or None: unknown, no spend shown)."""
        return self._costs().usd_per_hour

    def spent_yuan(self) -> float:
        """Return the spend so far in yuan."""
        return self._costs().spent_yuan()

    def must_stop(self, next_step_s: float = 0.0) -> bool:
        """Return True when the next step (about `next_step_s` long) would overrun the budget."""
        return self._costs().must_stop(next_step_s=next_step_s)

    def record_stop(self, step: int, total_steps: int) -> str:
        """Record the early stop in `cost.json` and return its reason."""
        return self._costs().record_stop(step, total_steps)

    def clear_stop(self) -> None:
        """Forget an earlier early stop (the run finished)."""
        self._costs().clear_stop()


def sync_targets(spec: JobSpec) -> list[tuple[str, Any]]:
    """Destinations that can hold checkpoints (`s3://`, `file://`), with their S3 settings."""
    from dream_job.artifacts import S3Settings

    return [(d, S3Settings(endpoint_url=spec.artifacts.s3_endpoint_url) if d.startswith("s3://") else None)
            for d in spec.artifacts.destinations if d.startswith(("s3://", "file://"))]


def sync_checkpoint(spec: JobSpec, run: str, folder: Path, step: int, *, final: bool) -> None:
    """Upload a just-saved checkpoint every `artifacts.sync_every_steps` (and before an early exit; every one
    with `train.save_every_steps: auto`)."""
    from dream_job.artifacts import sync_checkpoint as upload

    every = spec.artifacts.sync_every_steps
    # `train.save_every_steps: auto` already spaces the saves for the offer's preemptions: upload each.
    if every is None or not (final or step % every == 0 or spec.train.save_every_steps == "auto"):
        return
    for destination, s3 in sync_targets(spec):
        upload(folder, destination, run_id=run, s3=s3)
        logger.info("synced %s to %s", folder.name, destination)


def fetch_synced_checkpoint(spec: JobSpec, run: str, root: Path) -> None:
    """On a new machine with no local checkpoint, download the newest one a previous machine synced."""
    from dream_job.artifacts import fetch_latest_checkpoint

    for destination, s3 in sync_targets(spec):
        step = fetch_latest_checkpoint(destination, run, root, s3=s3)
        if step is not None:
            logger.info("fetched checkpoint step %d from %s", step, destination)
            return
