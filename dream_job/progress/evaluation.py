"""Evaluation on the screen: one progress bar per model and suite, and the accuracy table."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from dream_job.progress.console import stderr


class ItemsPerSecondColumn(ProgressColumn):
    """Items decoded per second in this session (resumed items do not count)."""

    def render(self, task: Task) -> Text:
        speed = task.speed
        return Text("– items/s" if speed is None else f"{speed:.2f} items/s")


@contextmanager
def eval_progress(console: Console | None = None) -> Iterator[Callable[[str, int, int], None]]:
    """Show one progress bar per model and suite on stderr while evaluating.

    Yields the callback to pass as `evaluate(..., progress=...)`: `callback(description,
    num_done, num_total)`. The first call for a description starts its bar at `num_done` (items
    reused from an earlier run), so the rate (items/s) and the ETA count only new items.

    Example:
        with eval_progress() as progress:
            evaluate(spec, model_label="final", progress=progress)
    """
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        ItemsPerSecondColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console or stderr,
    )
    tasks: dict[str, Any] = {}

    def update(description: str, num_done: int, num_total: int) -> None:
        if description not in tasks:
            tasks[description] = bars.add_task(description, total=num_total, completed=num_done)
        else:
            bars.update(tasks[description], completed=num_done, total=num_total)

    with bars:
        yield update


def eval_summary_table(summary: dict[str, Any]) -> Table:
    """Render `<run_dir>/eval/summary.json` as one row per suite: accuracy per model, change, n, tok/s.

    The cells come from `eval.report.summary_rows`, the same rows as the Markdown report's table.
    """
    from dream_job.eval.report import summary_rows

    header, rows = summary_rows(summary)
    table = Table(title="evaluation accuracy")
    for i, name in enumerate(header):
        table.add_column(name.replace("final − base", "Δ final − base"), justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    return table
