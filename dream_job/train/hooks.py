"""What the trainer's caller plugs in: display, cost guard, checkpoint sync (all optional).

The trainer knows nothing of the screen, of prices or of remote storage; the pipeline builds the
concrete hooks (`dream_job.train_hooks`) and hands them over, so `dream_job/train/` imports
nothing above itself. The trainer calls every hook on rank 0 only, so hooks need no rank checks
and no collectives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class Display(Protocol):
    """A live view of training (a progress bar on a terminal)."""

    def start(self, total_steps: int, start_step: int) -> None:
        """Show the view at `start_step` of `total_steps` (called once the trainer knows both)."""

    def update(self, step: int, metrics: dict[str, float]) -> None:
        """Show the metrics of `step`."""

    def close(self) -> None:
        """Remove the view (idempotent)."""


class CostGuard(Protocol):
    """The budget guard: what the run has spent and whether it must stop (rank 0 only)."""

    usd_per_hour: float | None

    def spent_yuan(self) -> float:
        """Return the spend so far in yuan."""

    def must_stop(self, next_step_s: float = 0.0) -> bool:
        """Return True when the next step (about `next_step_s` seconds, the last one's duration) would overrun the budget."""

    def record_stop(self, step: int, total_steps: int) -> str:
        """Record that training stops early at `step` and return the reason, one sentence."""

    def clear_stop(self) -> None:
        """Forget an earlier early stop (the run finished)."""


@dataclass
class TrainHooks:
    """The caller's plug-ins; a hook left None is skipped.

    Attributes:
        display: Live view, updated after every step.
        cost_guard: Budget guard, asked after every step (the ranks then agree on its answer).
        after_save: `after_save(folder, step, final)` after each checkpoint save (all ranks have
            written their shards); `final` is True for the save before an early exit (preemption, budget).
        fetch_checkpoint: `fetch_checkpoint(root)` when no local checkpoint exists: it may download
            the newest synced one into `root` (the other ranks wait for it).
    """

    display: Display | None = None
    cost_guard: CostGuard | None = None
    after_save: Callable[[Path, int, bool], None] | None = None
    fetch_checkpoint: Callable[[Path], None] | None = None
