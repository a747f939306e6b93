"""`loss.png`: train and validation loss, learning rate and grad norm of a run, one panel each.

Input: the logged history, `{metric key: {step: value}}`. The panels share the step axis, dotted
vertical lines mark the end of each epoch, and the title names the run. Written atomically with
matplotlib's object API (no pyplot global state, no display needed).
"""

from __future__ import annotations

import logging
from pathlib import Path

from dream_job.rundir import write_atomically

logger = logging.getLogger(__name__)

LOSS, VAL_LOSS, LR, GRAD_NORM = "train/loss", "val/loss", "train/lr", "train/grad_norm"
PLOTTED_KEYS = (LOSS, VAL_LOSS, LR, GRAD_NORM)


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing), same length as `values`."""
    out, ema = [], 0.0
    for i, value in enumerate(values, start=1):
        ema = weight * ema + (1 - weight) * value
        out.append(ema / (1 - weight**i))  # divide out the zero start so early points are not pulled to 0
    return out


def epoch_marks(last_step: int, steps_per_epoch: int | None) -> list[int]:
    """Return the steps that end an epoch, up to `last_step` (`epoch_marks(70, 35) == [35, 70]`)."""
    if not steps_per_epoch:
        return []
    return list(range(steps_per_epoch, last_step + 1, steps_per_epoch))


def plot_training(path: Path, history: dict[str, dict[int, float]], *, run_name: str, total_steps: int,
                  steps_per_epoch: int | None) -> None:
    """Write the three-panel plot to `path` atomically; log a warning instead without matplotlib.

    Args:
        path: Where the PNG goes (`<run>/logs/loss.png`).
        history: `{key: {step: value}}` for `PLOTTED_KEYS` (missing keys leave their panel empty).
        run_name: The job name, in the title.
        total_steps: Planned steps, in the title.
        steps_per_epoch: Where the epoch marks go (None: none).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # not a container dependency; the jsonl file holds the same numbers
        logger.warning("`matplotlib` is not installed; no `%s` (`pip install matplotlib`)", path)
        return
    fig = Figure(figsize=(8, 9), dpi=100)
    FigureCanvasAgg(fig)
    loss_ax, lr_ax, grad_ax = fig.subplots(3, 1, sharex=True)
    train = sorted(history.get(LOSS, {}).items())
    if train:
        steps, losses = zip(*train, strict=True)
        loss_ax.plot(steps, losses, color="tab:blue", alpha=0.35, linewidth=1, label="train")
        loss_ax.plot(steps, smooth(list(losses)), color="tab:blue", linewidth=2, label="train, EMA 0.9")
    if val := sorted(history.get(VAL_LOSS, {}).items()):
        loss_ax.plot(*zip(*val, strict=True), color="tab:orange", marker="o", linewidth=2, label="validation")
    for ax, key, color in ((lr_ax, LR, "tab:green"), (grad_ax, GRAD_NORM, "tab:red")):
        if points := sorted(history.get(key, {}).items()):
            ax.plot(*zip(*points, strict=True), color=color, linewidth=1.5)
    last = max((max(series) for series in history.values() if series), default=0)
    for ax, label in ((loss_ax, "loss"), (lr_ax, "learning rate"), (grad_ax, "grad norm")):
        for i, step in enumerate(epoch_marks(last, steps_per_epoch)):
            ax.axvline(step, color="grey", linestyle=":", linewidth=1, label="epoch end" if i == 0 and
                       ax is loss_ax else None)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    loss_ax.legend()
    grad_ax.set_xlabel("step")
    fig.suptitle(f"{run_name or 'training'}: {len(train)} logged steps, last {last}/{total_steps}")
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))  # a reader never sees half a PNG
