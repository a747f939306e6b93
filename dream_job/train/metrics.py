"""Training metrics: one dict per logging interval, sent to every sink on rank 0.

Input: `MetricsLogger.log(step, {"train/loss": ..., "perf/tokens_per_s": ..., ...})` with
slash-namespaced keys. Output under `<run>/logs/`: `train.log` (one plain fixed-field line per
call, also sent to `logging`), `metrics.jsonl` (one JSON object per call, for `dream-job status`),
`tensorboard/` (event files) and, on `close()`, `loss.png`. A resumed run continues the same
files: lines past the checkpoint it resumed from (logged by the run that was killed) are dropped
first, and TensorBoard purges its events from the next step, so no step appears twice.
A torn last line (a crash mid-write) is skipped and cut off.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from dream_job.rundir import METRICS_NAME, TRAIN_LOG_NAME, append_line, read_jsonl, write_text_atomically

logger = logging.getLogger(__name__)

# (metrics key, label in the log line, format) in the fixed order of the log line (style.md rule 8).
LINE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("train/loss", "loss", "{:.4f}"),
    ("train/grad_norm", "grad_norm", "{:.3f}"),
    ("train/lr", "lr", "{:.2e}"),
    ("perf/tokens_per_s", "tok/s", "{:.0f}"),
    ("perf/mfu", "mfu", "{:.1%}"),
    ("mem/peak_gib", "mem_gib", "{:.2f}"),
    ("time/eta_s", "eta", "eta"),
    ("cost/spent_yuan", "cost_yuan", "{:.2f}"),
)
LOSS_KEY = "train/loss"
# Without a terminal (`docker logs`, `sky logs`), the screen gets the log line of the first and last
# step, every tenth of the run and at least once a minute; `train.log` keeps every step. On a
# terminal the live view (`dream_job.progress.TrainingView`) shows the numbers instead.
ECHO_FRACTION, ECHO_EVERY_S = 10, 60.0
_LOG_STEP_RE = re.compile(r"^\S+ step (\d+)/")  # `2026-12-05T13:07:42Z step 128/140 loss ...`


def format_duration(seconds: float) -> str:
    """Format seconds as `h:mm:ss` (`3723` -> `1:02:03`); `-` when not finite."""
    if not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def format_line(step: int, total_steps: int, metrics: dict[str, float]) -> str:
    """Return the fixed-field log line: `step 3/100 loss 2.3456 grad_norm 1.234 lr 1.00e-05 ...`.

    Fields absent from `metrics` are left out; the others keep their fixed order.
    """
    parts = [f"step {step}/{total_steps}"]
    for key, label, fmt in LINE_FIELDS:
        if key in metrics:
            value = float(metrics[key])
            parts.append(f"{label} {format_duration(value) if fmt == 'eta' else fmt.format(value)}")
    return " ".join(parts)


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing), same length as `values`."""
    out, ema = [], 0.0
    for i, value in enumerate(values, start=1):
        ema = weight * ema + (1 - weight) * value
        out.append(ema / (1 - weight**i))  # divide out the zero start so early points are not pulled to 0
    return out


class MetricsLogger:
    """Send each interval's metrics to the log line, `train.log`, `metrics.jsonl` and TensorBoard.

    Only rank 0 writes; on other ranks every method does nothing, so callers need no rank checks.
    On creation the loss history is read back from an existing `metrics.jsonl`, so a resumed
    run's `loss.png` covers the whole run (a step logged twice keeps its latest value).

    Args:
        run_dir: The run directory; files go to `run_dir/logs/`.
        is_rank0: Whether this process writes.
        total_steps: Planned number of optimizer steps (the `step i/total` field).
        resume_step: The step training continues from (0 for a fresh start); lines of later
            steps already in the files are dropped.
    """

    def __init__(self, run_dir: Path, *, is_rank0: bool, total_steps: int, resume_step: int = 0) -> None:
        self.log_dir = Path(run_dir) / "logs"
        self.is_rank0 = is_rank0
        self.total_steps = total_steps
        self.resume_step = resume_step
        self.loss_by_step: dict[int, float] = {}
        self._writer: Any = None
        self._echoed_at: float | None = None  # monotonic time of the last line shown on the screen
        self._tensorboard_ok = True  # False once the import failed: warn once, then skip the sink
        self._closed = False
        if is_rank0:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._drop_lines_after(resume_step)
            self._read_history()

    @property
    def train_log_path(self) -> Path:
        return self.log_dir / TRAIN_LOG_NAME

    @property
    def metrics_path(self) -> Path:
        return self.log_dir / METRICS_NAME

    @property
    def plot_path(self) -> Path:
        return self.log_dir / "loss.png"

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Send one interval's metrics to every sink (rank 0 only).

        Appends one line to `train.log` and one JSON object (`step`, `time` in Unix seconds and
        the metrics) to `metrics.jsonl`, and adds every metric as a TensorBoard scalar at `step`.
        The same fixed-field line goes through `logging` only when `echo_due` says so.

        Args:
            step: Optimizer step the metrics belong to (1-based).
            metrics: Slash-namespaced scalars, e.g. `train/loss`, `mem/peak_gib`.
        """
        if not self.is_rank0:
            return
        values = {key: float(value) for key, value in metrics.items()}  # also turns 0-d tensors into floats
        line = format_line(step, self.total_steps, values)
        if self.echo_due(step, now=(now := time.monotonic()), last_shown=self._echoed_at):
            self._echoed_at = now
            logger.info(line)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        append_line(self.train_log_path, f"{stamp} {line}\n")
        append_line(self.metrics_path, json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
        if (writer := self._tensorboard(step)) is not None:
            for key, value in values.items():
                writer.add_scalar(key, value, step)
        if LOSS_KEY in values:
            self.loss_by_step[step] = values[LOSS_KEY]

    def echo_due(self, step: int, *, now: float, last_shown: float | None) -> bool:
        """Whether the log line of `step` goes to the screen: never on a terminal, else at a readable rate.

        Shown: the first step of this process, the last step, every `total_steps / ECHO_FRACTION`
        steps, and any step `ECHO_EVERY_S` seconds or more after the last line shown.

        Args:
            step: The step just logged.
            now: Monotonic seconds (`time.monotonic()`).
            last_shown: `now` of the last line shown; None before the first.
        """
        if sys.stderr.isatty():
            return False
        every = max(1, self.total_steps // ECHO_FRACTION)
        return (last_shown is None or step >= self.total_steps or step % every == 0
                or now - last_shown >= ECHO_EVERY_S)

    def close(self) -> None:
        """Flush TensorBoard and write `loss.png` atomically (loss vs step, smoothed line); idempotent.

        Without matplotlib installed, logs one warning instead of plotting.
        """
        if not self.is_rank0 or self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.close()
        if self.loss_by_step:
            self._plot_loss()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drop_lines_after(self, step: int) -> None:
        """Rewrite `metrics.jsonl` and `train.log` without lines past `step` (and without a torn tail)."""
        records = read_jsonl(self.metrics_path, repair=True)
        if any(int(r.get("step", 0)) > step for r in records):
            kept = [r for r in records if int(r.get("step", 0)) <= step]
            write_text_atomically(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
            logger.info("resuming at step %d: dropped %d logged step(s) after it from `%s`", step,
                        len(records) - len(kept), self.metrics_path)
        if self.train_log_path.is_file():
            lines = self.train_log_path.read_bytes().decode("utf-8", errors="replace").splitlines(keepends=True)
            kept_lines = [ln for ln in lines if ln.endswith("\n") and not _logged_after(ln, step)]
            if len(kept_lines) != len(lines):
                write_text_atomically(self.train_log_path, "".join(kept_lines))

    def _read_history(self) -> None:
        for record in read_jsonl(self.metrics_path):
            if LOSS_KEY in record:
                self.loss_by_step[int(record["step"])] = float(record[LOSS_KEY])

    def _tensorboard(self, step: int) -> Any:
        """Return the SummaryWriter, created at the first logged step; None without tensorboard."""
        if self._writer is None and self._tensorboard_ok:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tensorboard_ok = False
                logger.warning("`tensorboard` is not installed; no TensorBoard logs (`pip install tensorboard`)")
                return None
            # purge_step: events after the checkpoint this run resumed from (written by the run
            # that was killed) are dropped from the old files, so the curves do not fold back.
            self._writer = SummaryWriter(log_dir=str(self.log_dir / "tensorboard"), purge_step=self.resume_step + 1)
        return self._writer

    def _plot_loss(self) -> None:
        # The object API with the Agg canvas: no pyplot global state and no display needed.
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:  # not a container dependency; the jsonl file holds the same numbers
            logger.warning("`matplotlib` is not installed; no `%s` (`pip install matplotlib`)", self.plot_path)
            return

        steps = sorted(self.loss_by_step)
        losses = [self.loss_by_step[s] for s in steps]
        fig = Figure(figsize=(8, 4.5), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot(steps, losses, color="tab:blue", alpha=0.35, linewidth=1, label="loss")
        ax.plot(steps, smooth(losses), color="tab:blue", linewidth=2, label="smoothed (EMA 0.9)")
        ax.set_xlabel("step")
        ax.set_ylabel("train/loss")
        ax.set_title(f"training loss ({len(steps)} points, last step {steps[-1]}/{self.total_steps})")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        tmp = self.plot_path.with_name(f".{self.plot_path.name}.tmp")
        fig.savefig(tmp, format="png")
        os.replace(tmp, self.plot_path)  # atomic: a reader never sees half a PNG


def _logged_after(line: str, step: int) -> bool:
    match = _LOG_STEP_RE.match(line)
    return match is not None and int(match.group(1)) > step
