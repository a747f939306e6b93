"""Scalar sinks of the training metrics besides the log files: TensorBoard and Weights & Biases.

`train.report_to` picks them (default `[tensorboard]`). TensorBoard is a container dependency;
without it a warning is logged once and the sink skipped. W&B is optional (`pip install
'dream-job[wandb]'`) and imported only when asked for; it reads its own settings from the
environment (`WANDB_API_KEY`, `WANDB_PROJECT`, `WANDB_MODE=offline`, ...).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from dream_job.errors import SpecError
from dream_job.rundir import write_text_atomically

logger = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
WANDB_ID_NAME = "wandb_run_id"  # in the logs folder: a resumed run continues the same W&B run
WANDB_PROJECT = "dream-job"  # when `WANDB_PROJECT` is not set


class Sink(Protocol):
    """Receives every logged interval's scalars."""

    def add(self, step: int, values: dict[str, float]) -> None:
        """Record `values` at `step`."""

    def close(self) -> None:
        """Flush and close."""


class TensorBoardSink:
    """Event files in `<logs>/tensorboard/`, created at the first logged step.

    Args:
        log_dir: The run's logs folder.
        resume_step: Events after it (written by a killed run) are purged, so curves do not fold back.
    """

    def __init__(self, log_dir: Path, *, resume_step: int) -> None:
        self.path, self.resume_step = Path(log_dir) / TENSORBOARD_DIR, resume_step
        self._writer: Any = None
        self._available = True  # False once the import failed: warn once, then skip

    def add(self, step: int, values: dict[str, float]) -> None:
        """Add every value as a scalar at `step`."""
        if self._writer is None and self._available:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._available = False
                logger.warning("`tensorboard` is not installed; no TensorBoard logs (`pip install tensorboard`)")
                return
            self._writer = SummaryWriter(log_dir=str(self.path), purge_step=self.resume_step + 1)
        if self._writer is not None:
            for key, value in values.items():
                self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush the event file."""
        if self._writer is not None:
            self._writer.close()


class WandbSink:
    """One Weights & Biases run per run dir; its id is kept in `<logs>/wandb_run_id` so a resume continues it.

    Args:
        log_dir: The run's logs folder (W&B's own files go to `<logs>/wandb/`).
        run_name: The W&B run's display name (the job name).
        config: The job spec as plain data, shown as the run's config.

    Raises:
        SpecError: `wandb` is not installed (names `train.report_to` and the extra to install).
    """

    def __init__(self, log_dir: Path, *, run_name: str, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise SpecError(
                "`train.report_to` includes `wandb` but the `wandb` package is not installed",
                key="train.report_to",
                hint="install it with `pip install 'dream-job[wandb]'` (or `pip install wandb`), or remove `wandb` "
                     "from `train.report_to`",
            ) from None
        id_path = Path(log_dir) / WANDB_ID_NAME
        run_id = id_path.read_text().strip() if id_path.is_file() else secrets.token_hex(4)
        write_text_atomically(id_path, run_id + "\n")
        self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", WANDB_PROJECT), name=run_name, id=run_id,
                               resume="allow", dir=str(log_dir), config=config)

    def add(self, step: int, values: dict[str, float]) -> None:
        """Log the values at `step` (W&B ignores a step below one it has seen, as after a resume)."""
        self._run.log(values, step=step)

    def close(self) -> None:
        """Finish the run (offline: its files stay in `<logs>/wandb/` for `wandb sync`)."""
        self._run.finish()


def open_sinks(report_to: list[str], log_dir: Path, *, resume_step: int, run_name: str,
               config: dict[str, Any]) -> list[Sink]:
    """Return the sinks `train.report_to` names, in its order."""
    sinks: list[Sink] = []
    for name in report_to:
        if name == "tensorboard":
            sinks.append(TensorBoardSink(log_dir, resume_step=resume_step))
        elif name == "wandb":
            sinks.append(WandbSink(log_dir, run_name=run_name, config=config))
    return sinks
