"""`dream-job train`: the masked-diffusion SFT run with exact resume, around a `Trainer`.

Reads `<run_dir>/data/` (written by prep), trains with FSDP2, writes
`<run_dir>/checkpoints/step-NNNNNN/` every `train.save_every_steps` and at the end (DCP
shards, `COMPLETE` last), logs to `<run_dir>/logs/`, and exports the final model to
`<run_dir>/export/`. A re-run resumes from the newest complete checkpoint; every random draw
is a function of (seed, step, micro-batch), so a resumed run repeats the uninterrupted one.
SIGTERM (spot preemption) saves at the next step boundary and exits with code 3; Ctrl-C
(SIGINT) saves the same way and exits with code 130 (`dream_job.stopping`: a stop while the
model is built or exported ends at once; one during the last step still stops before the export). A full disk while checkpointing is reported
as such, with the half-written checkpoint removed; CUDA running out of memory names the next
smaller setting to try.
"""

from __future__ import annotations

import logging
import shutil
from typing import Any

import torch

from budget import fallback_methods
from dream_job import stopping
from dream_job.data.prep import PREP_AGAIN_FIX, read_report
from dream_job.errors import CheckpointError, DataError, DiskFullError, SpecError
from dream_job.rundir import CHECKPOINTS_DIR, DATA_DIR, TRAIN_ROWS_DIR, is_disk_full
from dream_job.spec import JobSpec
from dream_job.train.distributed import close_distributed, init_distributed
from dream_job.train.hooks import TrainHooks
from dream_job.train.trainer import Preempted, Trainer, TrainResult, lr_factor

__all__ = ["Preempted", "TrainResult", "load_prepared", "lr_factor", "oom_hint", "train"]

logger = logging.getLogger(__name__)

class ProcessStop:
    """The process's stop request (`dream_job.stopping`), as the trainer reads it at each step boundary."""

    @property
    def requested(self) -> bool:
        return stopping.requested() is not None

    @property
    def signal_name(self) -> str:
        return stopping.requested() or ""


def load_prepared(spec: JobSpec) -> tuple[Any, dict[str, Any]]:
    """Return the prepared training rows (`datasets.Dataset`) and the prep report of the job's run dir.

    Raises:
        DataError: No prepared data, or data prepared with another tokenizer than the job's.
    """
    import datasets

    data_dir = spec.run_dir() / DATA_DIR
    report = read_report(data_dir)
    if report is None:
        raise DataError(
            f"no prepared data in `{data_dir}`",
            hint="run `dream-job prep` with the same job file and `--set` options first",
        )
    tokenizer = spec.model.tokenizer or spec.model.base
    if report["tokenizer"] != tokenizer:
        raise DataError(
            f"the data in `{data_dir}` was prepared with the tokenizer `{report['tokenizer']}`, "
            f"but this job uses `{tokenizer}`",
            hint="re-run `dream-job prep` with this job file, or use another `artifacts.run_dir`",
        )
    rows = data_dir / TRAIN_ROWS_DIR
    try:
        return datasets.load_from_disk(str(rows)), report
    except (OSError, ValueError) as exc:  # a truncated `.arrow` (pyarrow's ArrowInvalid is a ValueError), a lost file
        raise DataError(f"the prepared training rows in `{rows}` are damaged", path=rows,
                        caused_by=[f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"],
                        hint=PREP_AGAIN_FIX.format(data_dir=data_dir)) from None


def oom_hint(spec: JobSpec) -> str:
    """Return the next smaller setting to try after CUDA ran out of memory (`try --set ...`)."""
    train = spec.train
    if train.micro_batch_size > 1:
        return f"try `--set train.micro_batch_size={train.micro_batch_size // 2}`"
    if train.activation_checkpointing is not True:
        return "try `--set train.activation_checkpointing=true` (recompute every layer)"
    if nxt := next(iter(fallback_methods(train.method)), None):  # the preflight's order (budget)
        return f"try `--set train.method={nxt}` (see `dream-job estimate` for what fits)"
    return f"try a shorter `data.max_length` (now {spec.data.max_length}) or a GPU with more memory"


def train(spec: JobSpec, hooks: TrainHooks | None = None) -> TrainResult:
    """Train the job's model on its prepared data, resuming from the newest complete checkpoint.

    Writes checkpoints, logs and the final export under the run dir (see the module docstring).

    Args:
        spec: The job spec.
        hooks: The caller's display, budget guard and checkpoint sync (none: plain training).

    Raises:
        DreamJobError: (subclasses) Data not prepared or prepared for another tokenizer, base model missing,
            method impossible on this hardware, or CUDA out of memory (with the next setting to try).
        DiskFullError: The disk filled up while checkpointing (the torn checkpoint is removed).
        Preempted: SIGTERM (exit code 3) or Ctrl-C (exit code 130); the checkpoint is saved.
    """
    dataset, report = load_prepared(spec)
    dist_info = init_distributed(spec.train.device)
    stop = ProcessStop()
    succeeded, trainer = False, None
    try:
        stopping.pause_point("train:build")
        # Building is not deferred: a stop during it (a 7B load takes minutes) ends it at once.
        trainer = Trainer(spec, dataset, report, dist_info, hooks)
        with stopping.deferred():  # a step and its checkpoint finish; `fit` polls the request
            stopped_early = trainer.fit(stop)
        result = trainer.finish(stopped_early)
        succeeded = True
        return result
    except CheckpointError as exc:
        if is_disk_full(exc) or any("No space left" in line or "unexpected pos" in line for line in exc.caused_by):
            raise _disk_full(spec) from None
        raise
    except torch.OutOfMemoryError:
        peak = torch.cuda.max_memory_allocated() / 2**30
        raise SpecError(
            f"CUDA ran out of memory at {peak:.1f} GiB with `train.method` `{spec.train.method}`, "
            f"`train.micro_batch_size` {spec.train.micro_batch_size}, `data.max_length` {spec.data.max_length}",
            hint=oom_hint(spec),
        ) from None
    finally:
        if trainer is not None:
            trainer.close()  # on any failure too: the terminal gets its cursor back, the logs are flushed
        close_distributed(succeeded=succeeded)


def _disk_full(spec: JobSpec) -> DiskFullError:
    """Name the full disk and remove the torn checkpoint a failed save left (`.step-N.partial`)."""
    root = spec.run_dir() / CHECKPOINTS_DIR
    for partial in root.glob(".step-*.partial"):
        shutil.rmtree(partial, ignore_errors=True)
    free_mib = shutil.disk_usage(root if root.exists() else spec.run_dir()).free / 2**20
    return DiskFullError(
        f"disk full at `{root}` while saving a checkpoint ({free_mib:.0f} MiB free)",
        hint="free space there (or lower `train.keep_checkpoints`, or use a larger disk), then run the same "
             "command again: it resumes from the last complete checkpoint",
    )
