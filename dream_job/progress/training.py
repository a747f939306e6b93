"""The live view of training on a terminal and the numbers it shows."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from dream_job.progress.console import stderr


class TrainingView:
    """The one live display of training on a terminal; does nothing otherwise (a `train.hooks.Display`).

    One line: bar, step of total, loss, tokens/s, MFU, spend and ETA. The per-step log lines go
    to `train.log` only (`dream_job.train.metrics.MetricsLogger.echo_due`), so nothing scrolls
    under the bar; without a terminal the screen gets plain lines at a readable rate instead.
    """

    def __init__(self) -> None:
        self._progress: Progress | None = None

    def start(self, total_steps: int, start_step: int) -> None:
        """Show the bar at `start_step` of `total_steps` (on a terminal only)."""
        if self._progress is None and stderr.is_terminal:
            self._progress = Progress(
                TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                TextColumn("eta"), TimeRemainingColumn(), console=stderr, transient=True,
            )
            self._task = self._progress.add_task("train", total=total_steps, completed=start_step, status="")
            self._progress.start()

    def update(self, step: int, metrics: dict[str, float]) -> None:
        """Show `step` and its loss, tokens/s, MFU and spend (those present in `metrics`)."""
        if self._progress is not None:
            self._progress.update(self._task, completed=step, status=training_status(metrics))

    def close(self) -> None:
        """Remove the bar (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def training_status(metrics: dict[str, float]) -> str:
    """Return the live view's numbers: `loss 2.346  12,346 tok/s  MFU 41.2%  ¥1.23` (4 significant digits)."""
    parts = [f"loss {metrics['train/loss']:.4g}"] if "train/loss" in metrics else []
    if "perf/tokens_per_s" in metrics:
        parts.append(f"{metrics['perf/tokens_per_s']:,.0f} tok/s")
    if "perf/mfu" in metrics:
        parts.append(f"MFU {metrics['perf/mfu']:.1%}")
    if "cost/spent_yuan" in metrics:
        parts.append(f"¥{metrics['cost/spent_yuan']:.2f}")
    return "  ".join(parts)
