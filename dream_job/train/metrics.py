"""Training metrics: one dict per logging interval, sent to every sink on rank 0.

Input: `MetricsLogger.log(step, {"train/loss": ..., "val/loss": ..., "perf/tokens_per_s": ...})`
with slash-namespaced keys. Output under `<run>/logs/`: `train.log` (one plain fixed-field line per
call, also sent to `logging`), `metrics.jsonl` (one JSON object per call, for `dream-job status`),
the `train.report_to` sinks (`tensorboard/` event files, Weights & Biases; `sinks.py`) and, on
`close()`, `loss.png` (`plot.py`). A resumed run continues the same files: lines past the
checkpoint it resumed from (logged by the run that was killed) are dropped first, and TensorBoard
purges its events from the next step, so no step appears twice. A torn last line (a crash
mid-write) is skipped and cut off.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dream_job.rundir import (
    LOGS_DIR, LOSS_PLOT_NAME, METRICS_NAME, TRAIN_LOG_NAME, append_line, read_jsonl, write_text_atomically,
)
from dream_job.train.plot import PLOTTED_KEYS, plot_training, smooth
from dream_job.train.sinks import open_sinks

__all__ = ["MetricsLogger", "format_duration", "format_line", "smooth"]

logger = logging.getLogger(__name__)

# (metrics key, label in the log line, format) in the fixed order of the log line (style.md rule 8).
LINE_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("train/epoch", "epoch", "{:.2f}"),
    ("train/loss", "loss", "{:.4f}"),
    ("val/loss", "val_loss", "{:.4f}"),
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
# terminal the caller's live view (`train/hooks.Display`) shows the numbers instead.
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


class MetricsLogger:
    """Send each interval's metrics to the log line, `train.log`, `metrics.jsonl` and the `report_to` sinks.

    Only rank 0 writes; on other ranks every method does nothing, so callers need no rank checks.
    On creation the plotted history is read back from an existing `metrics.jsonl`, so a resumed
    run's `loss.png` covers the whole run (a step logged twice keeps its latest value).

    Args:
        run_dir: The run directory; files go to `run_dir/logs/`.
        is_rank0: Whether this process writes.
        total_steps: Planned number of optimizer steps (the `step i/total` field).
        resume_step: The step training continues from (0 for a fresh start); lines of later
            steps already in the files are dropped.
        report_to: Scalar sinks (`train.report_to`): `tensorboard`, `wandb`.
        run_name: Shown in the plot's title and as the W&B run name.
        steps_per_epoch: Where the plot marks epochs (None: no marks).
        config: The job spec as plain data, for W&B's run config.

    Raises:
        SpecError: `wandb` asked for but not installed.
    """

    def __init__(self, run_dir: Path, *, is_rank0: bool, total_steps: int, resume_step: int = 0,
                 report_to: Sequence[str] = ("tensorboard",), run_name: str = "", steps_per_epoch: int | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.log_dir = Path(run_dir) / LOGS_DIR
        self.is_rank0 = is_rank0
        self.total_steps, self.resume_step = total_steps, resume_step
        self.run_name, self.steps_per_epoch = run_name, steps_per_epoch
        self.history: dict[str, dict[int, float]] = {key: {} for key in PLOTTED_KEYS}
        self._sinks: list[Any] = []
        self._echoed_at: float | None = None  # monotonic time of the last line shown on the screen
        self._closed = False
        if is_rank0:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._drop_lines_after(resume_step)
            self._read_history()
            self._sinks = open_sinks(list(report_to), self.log_dir, resume_step=resume_step, run_name=run_name,
                                     config=config or {})

    @property
    def train_log_path(self) -> Path:
        return self.log_dir / TRAIN_LOG_NAME

    @property
    def metrics_path(self) -> Path:
        return self.log_dir / METRICS_NAME

    @property
    def plot_path(self) -> Path:
        return self.log_dir / LOSS_PLOT_NAME

    @property
    def loss_by_step(self) -> dict[int, float]:
        """The training loss of every logged step (this run and, after a resume, the earlier ones)."""
        return self.history[LOSS_KEY]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Send one interval's metrics to every sink (rank 0 only).

        Appends one line to `train.log` and one JSON object (`step`, `time` in Unix seconds and
        the metrics) to `metrics.jsonl`, and adds every metric to each `report_to` sink at `step`.
        The same fixed-field line goes through `logging` only when `echo_due` says so.

        Args:
            step: Optimizer step the metrics belong to (1-based).
            metrics: Slash-namespaced scalars, e.g. `train/loss`, `val/loss`, `mem/peak_gib`.
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
        for sink in self._sinks:
            sink.add(step, values)
        for key, series in self.history.items():
            if key in values:
                series[step] = values[key]

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
        """Close the sinks and write `loss.png` atomically (`plot.plot_training`); idempotent.

        Without matplotlib installed, logs one warning instead of plotting.
        """
        if not self.is_rank0 or self._closed:
            return
        self._closed = True
        for sink in self._sinks:
            sink.close()
        if self.loss_by_step:
            plot_training(self.plot_path, self.history, run_name=self.run_name, total_steps=self.total_steps,
                          steps_per_epoch=self.steps_per_epoch)

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
            for key, series in self.history.items():
                if key in record:
                    series[int(record["step"])] = float(record[key])


def _logged_after(line: str, step: int) -> bool:
    match = _LOG_STEP_RE.match(line)
    return match is not None and int(match.group(1)) > step
