"""The `Trainer`: built once (model, optimizer, schedule, batch plan, checkpoints), then stepped.

`Trainer(spec, dataset, report, dist_info, hooks)` builds everything and resumes from the newest
complete checkpoint; `fit(stop)` runs `step()` → `log()` → `maybe_save()` until the planned step,
a stop request or the budget guard; `finish()` closes the logs and exports the model. Display,
budget guard and checkpoint sync are the caller's hooks (`train/hooks.py`). Every random draw is
a function of (seed, step, micro-batch), so a resumed run repeats the uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from budget.flops import peak_flops, train_flops_per_token
from dream_job.data.holdout import read_holdout_tokens
from dream_job.data.prep import read_column
from dream_job.errors import EXIT_INTERRUPTED, EXIT_TRANSIENT, DataError, SpecError, TransientError
from dream_job.rundir import (
    CHECKPOINTS_DIR, DATA_DIR, EXPORT_DIR, EXPORT_INFO_NAME, LOGS_DIR, METRICS_NAME, TOKENIZER_DIR, read_jsonl,
    writing_to,
)
from dream_job.spec import JobSpec
from dream_job.stopping import deferred, pause_point
from dream_job.train.batches import BatchPlan, collate, hash_seed
from dream_job.train.build import Built, build_training
from dream_job.train.checkpoint import CheckpointManager
from dream_job.train.distributed import Dist
from dream_job.train.export import export_hf
from dream_job.train.hooks import TrainHooks
from dream_job.train.metrics import MetricsLogger
from dream_job.train.state import TRAIN_STATE_VERSION, DictState, ModelOptimizerState, TrainState
from dream_job.train.validation import Validator

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class TrainResult:
    """What a finished training run produced."""

    steps: int
    final_loss: float
    export_dir: Path
    resumed_from: int | None
    total_steps: int = 0
    stopped_early: str | None = None  # why the budget guard stopped before `total_steps`
    val_loss: float | None = None  # the held-out loss at the last step (None: no validation)


class Preempted(TransientError):
    """SIGTERM or Ctrl-C arrived; a checkpoint was saved and the run can resume."""


class StopRequest(Protocol):
    """Set by a signal handler; read at each step boundary."""

    requested: bool
    signal_name: str


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Return the learning-rate multiplier: linear warm-up, then half-cosine down to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def plan_batches(lengths: list[int], spec: JobSpec, world_size: int) -> BatchPlan:
    """Return the run's batch plan, or say which batch setting cannot work with these rows and processes.

    Raises:
        SpecError: `train.global_batch_size` is not a multiple of micro-batch x processes, or
            larger than the number of prepared rows.
    """
    train = spec.train
    per_round = train.micro_batch_size * world_size
    if train.global_batch_size % per_round:
        raise SpecError(
            f"`train.global_batch_size` ({train.global_batch_size}) must be a multiple of `train.micro_batch_size` "
            f"x processes ({train.micro_batch_size} x {world_size})",
            hint=f"set `--set train.global_batch_size={per_round * max(1, train.global_batch_size // per_round)}` "
                 "or run on a number of GPUs that divides it",
        )
    if len(lengths) < train.global_batch_size:
        fitting = max(train.micro_batch_size, len(lengths) // per_round * per_round)
        raise SpecError(
            f"only {len(lengths)} training rows were prepared, fewer than `train.global_batch_size` "
            f"({train.global_batch_size})",
            hint=f"set `--set train.global_batch_size={fitting}` or lower `data.holdout_size`",
        )
    return BatchPlan(lengths, global_batch_size=train.global_batch_size, micro_batch_size=train.micro_batch_size,
                     world_size=world_size, seed=train.seed)


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum `values` over all ranks (float64; collective)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _build(spec: JobSpec, dataset: Any, dist_info: Dist) -> Built:
    try:
        built = build_training(spec, dist_info)
    except ValueError as exc:  # the model config or a setting the model cannot take
        raise SpecError(f"cannot build the model of `model.base` `{spec.model.base}` with this job's settings",
                            caused_by=[str(exc).splitlines()[0]],
                            hint="check the base model's `config.json` and the `model`/`train` settings") from None
    largest = max(max(ids) for ids in dataset["input_ids"])
    if largest >= built.config.vocab_size:
        raise DataError(
            f"the prepared data has token id {largest}, beyond the model's vocabulary ({built.config.vocab_size})",
            hint="the data was tokenized for another model: re-run `dream-job prep` with this job's `model.base`",
        )
    return built


class Trainer:
    """One training run: construction resumes, `step()` trains, `log()`/`maybe_save()` record, `finish()` exports.

    Args:
        spec: The job spec.
        dataset: The prepared training rows (`datasets.Dataset` with `input_ids`, `prompt_length`, `num_tokens`).
        report: The prep report (its `inputs_hash` guards the checkpoints against other data).
        dist_info: This process's rank, world size and device.
        hooks: The caller's display, budget guard and checkpoint sync.
    """

    def __init__(self, spec: JobSpec, dataset: Any, report: dict[str, Any], dist_info: Dist,
                 hooks: TrainHooks | None = None) -> None:
        self.spec, self.cfg, self.dataset, self.dist = spec, spec.train, dataset, dist_info
        self.hooks, self.run_dir = hooks or TrainHooks(), spec.run_dir()
        self.plan = plan_batches(read_column(dataset, "num_tokens"), spec, dist_info.world_size)
        self.total_steps = self.plan.steps_per_epoch * self.cfg.epochs
        if self.cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, self.cfg.max_steps)
        self.built = _build(spec, dataset, dist_info)
        warmup = max(1, round(self.cfg.warmup_ratio * self.total_steps))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.built.optimizer, lambda s: lr_factor(
            s, warmup_steps=warmup, total_steps=self.total_steps, min_ratio=self.cfg.min_lr_ratio))
        self.state = TrainState(version=TRAIN_STATE_VERSION, step=0, tokens_seen=0,
                                world_size=dist_info.world_size, data_hash=report["inputs_hash"])
        self.states = {"model": ModelOptimizerState(self.built.model, self.built.optimizer),
                       "scheduler": DictState(self.scheduler), "train": self.state}
        self.checkpoints = CheckpointManager(self.run_dir / CHECKPOINTS_DIR, keep=self.cfg.keep_checkpoints,
                                             pin_memory=dist_info.device.type == "cuda")
        self.save_every = self.cfg.save_interval()
        if self.cfg.save_every_steps == "auto" and dist_info.is_rank0:
            logger.info("`train.save_every_steps` auto, not resolved by a launch: the last step only")
        self.resumed_from = self._resume()
        self.metrics = MetricsLogger(self.run_dir, is_rank0=dist_info.is_rank0, total_steps=self.total_steps,
                                     resume_step=self.state.step, report_to=self.cfg.report_to, run_name=spec.name,
                                     steps_per_epoch=self.plan.steps_per_epoch, config=spec.model_dump(mode="json"))
        self.validator = self._validator()
        self.peak_flops = (peak_flops(torch.cuda.get_device_name(dist_info.device))
                           if dist_info.device.type == "cuda" else None)
        self.start_step, self.started, self.loss = self.state.step, time.perf_counter(), float("nan")
        self.val_loss: float | None = None
        self.last_step_s = 0.0  # the duration of the last step, the guard's estimate of the next one
        if dist_info.is_rank0 and self.hooks.display is not None:
            self.hooks.display.start(self.total_steps, self.state.step)

    def _resume(self) -> int | None:
        if self.checkpoints.latest_step() is None and self.hooks.fetch_checkpoint is not None:
            if self.dist.is_rank0:
                self.hooks.fetch_checkpoint(self.checkpoints.root)
            dist.barrier()
        resumed_from = self.checkpoints.newest_intact_step()  # a damaged newer one is named and skipped
        if resumed_from is not None:
            self.checkpoints.load(resumed_from, self.states)
            logger.info("resumed from %s", self.checkpoints.folder(resumed_from))
        return resumed_from

    def _validator(self) -> Validator | None:
        if self.cfg.eval_every_steps is None:
            return None
        rows = read_holdout_tokens(self.run_dir / DATA_DIR, self.spec.data)
        validator = Validator(rows, self.cfg, pad_id=self.built.config.pad_token_id,
                              eos_id=self.built.config.eos_token_id, rank=self.dist.rank,
                              world_size=self.dist.world_size, device=self.dist.device)
        return validator if validator.enabled else None

    @property
    def done(self) -> bool:
        """Whether the planned number of steps has been trained."""
        return self.state.step >= self.total_steps

    def step(self) -> dict[str, float]:
        """Run one optimizer step and return its metrics (`train/loss`, `train/lr`, `perf/...`, `val/loss` when due)."""
        step_start = time.perf_counter()
        if self.dist.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dist.device)
        loss, tokens, grad_norm = self._forward_backward(self.state.step)
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        self.state.step += 1
        self.state.tokens_seen += tokens
        self.loss = loss
        seconds = self.last_step_s = time.perf_counter() - step_start
        values = {"train/loss": loss, "train/grad_norm": grad_norm, "train/lr": lr,
                  "train/epoch": self.state.step / self.plan.steps_per_epoch, "perf/tokens_per_s": tokens / seconds,
                  "time/eta_s": (time.perf_counter() - self.started) / (self.state.step - self.start_step)
                  * (self.total_steps - self.state.step)}
        values |= self._device_metrics(tokens, seconds)
        if (guard := self.hooks.cost_guard) is not None and guard.usd_per_hour:
            values["cost/spent_yuan"] = guard.spent_yuan()
        if self._validation_due():
            values["val/loss"] = self.val_loss = self.validator.loss(self.built.model)  # type: ignore[union-attr]
        return values

    def _validation_due(self) -> bool:
        every = self.cfg.eval_every_steps
        return self.validator is not None and every is not None and (self.state.step % every == 0 or self.done)

    def _device_metrics(self, tokens: int, seconds: float) -> dict[str, float]:
        if self.dist.device.type != "cuda":
            return {}
        values = {"mem/peak_gib": torch.cuda.max_memory_allocated(self.dist.device) / 2**30}
        if self.peak_flops:
            c = self.built.config
            per_token = train_flops_per_token(
                hidden=c.hidden_size, intermediate=c.intermediate_size, num_layers=c.num_hidden_layers,
                num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads, vocab=c.vocab_size,
                seq_len=round(tokens / self.cfg.global_batch_size))
            values["perf/mfu"] = per_token * tokens / seconds / (self.peak_flops * self.dist.world_size)
        return values

    def _forward_backward(self, step: int) -> tuple[float, int, float]:
        """Accumulate the step's micro-batches, clip, update; return (mean loss, tokens on all ranks, grad norm)."""
        model, train = self.built.model, self.cfg
        loss_sum, tokens = 0.0, 0
        for micro_index, row_ids in self.plan.micro_batches(step, self.dist.rank):
            rows = self.dataset[row_ids]
            batch = collate(
                [{"input_ids": ids, "prompt_length": p} for ids, p in zip(rows["input_ids"], rows["prompt_length"])],
                cutoff=train.cutoff, pad_id=self.built.config.pad_token_id, eos_id=self.built.config.eos_token_id,
                seed=train.seed, step=step, micro_index=micro_index, device=self.dist.device,
            )
            # LoRA dropout draws from the global generator: seed it per micro-batch too.
            torch.manual_seed(hash_seed(train.seed, step, micro_index, 1))
            # Gradients are reduce-scattered after every micro-batch (FSDP2's default). Turning sync off
            # for accumulation would keep an unsharded fp32 gradient of every parameter on each GPU
            # (+28 GiB for Dream-7B, measured on an H100), more than the saved communication is worth.
            loss, _ = model(
                batch.input_ids_BL, loss_mask_BL=batch.loss_mask_BL, attention_mask_BL=batch.attention_mask_BL,
                position_ids_BL=batch.position_ids_BL, generator=batch.generator, time_eps=train.time_eps,
                weighting=train.loss_weighting, cart_p=train.cart_p,
            )
            # Dream's normalisation: each micro-batch's loss is already per masked token; average them.
            (loss / self.plan.accumulation_steps).backward()
            loss_sum += float(loss.detach())
            tokens += batch.num_tokens
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], train.grad_clip)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        self.built.optimizer.step()
        self.built.optimizer.zero_grad(set_to_none=True)
        total_loss, total_tokens = all_sum([loss_sum, tokens], self.dist.device)
        return total_loss / (self.plan.accumulation_steps * self.dist.world_size), int(total_tokens), float(grad_norm)

    def log(self, values: dict[str, float]) -> None:
        """Show the step on the display and send it to the metrics sinks when due (every `train.log_every_steps`,
        the last step and every validation step)."""
        step = self.state.step
        if self.dist.is_rank0 and self.hooks.display is not None:
            self.hooks.display.update(step, values)
        if step % self.cfg.log_every_steps == 0 or self.done or "val/loss" in values:
            self.metrics.log(step, values)

    def over_budget(self) -> bool:
        """Ask the budget guard (rank 0) whether to stop; the answer is agreed on by all ranks (collective)."""
        guard = self.hooks.cost_guard
        # The next step will take about as long as the last one: stop before a step the budget cannot pay.
        over = self.dist.is_rank0 and guard is not None and guard.must_stop(self.last_step_s)
        return bool(all_sum([float(over)], self.dist.device)[0])

    def maybe_save(self, *, force: bool = False) -> None:
        """Save a checkpoint every `train.save_every_steps`, at the last step or when `force`d, then run `after_save`.

        Collective: every rank writes its shards (`CheckpointManager.save`: partial folder, then `COMPLETE`).
        With `train.async_save` the scheduled saves are written in the background: a save is completed
        (marked, then `after_save`) at the first step boundary after every rank wrote its shards, or
        before the next save; a forced save (stop, budget) waits for the one in flight and is written
        before this returns.
        """
        step = self.state.step
        self._complete_written_save()
        due = self.save_every is not None and step % self.save_every == 0
        if not (force or due or self.done):
            return
        if force and self.checkpoints.in_flight == step:  # this very step is being written: finish it
            self._complete_save(final=True)
            return
        self._complete_save(final=False)
        if self.cfg.async_save and not force:
            self.checkpoints.save_async(step, self.states)
            return
        self.checkpoints.save(step, self.states)
        if self.dist.is_rank0 and self.hooks.after_save is not None:
            self.hooks.after_save(self.checkpoints.folder(step), step, force)

    def _complete_written_save(self) -> None:
        """Complete the save in flight once every rank has written its shards (collective while one is in flight)."""
        if self.checkpoints.in_flight is None:  # the same on every rank: saves are collective
            return
        written = all_sum([float(self.checkpoints.write_done())], self.dist.device)[0]
        if written == self.dist.world_size:
            self._complete_save(final=False)

    def _complete_save(self, *, final: bool) -> None:
        """Wait for the save in flight, if any, complete it and run `after_save` (collective)."""
        step = self.checkpoints.in_flight
        folder = self.checkpoints.wait()
        if folder is not None and self.dist.is_rank0 and self.hooks.after_save is not None:
            self.hooks.after_save(folder, step, final)

    def stop_early(self) -> str:
        """Record the budget stop with the guard (rank 0) and return its reason."""
        guard = self.hooks.cost_guard
        reason = guard.record_stop(self.state.step, self.total_steps) if guard is not None else "budget spent"
        logger.warning("%s", reason)
        return reason

    def fit(self, stop: StopRequest) -> str | None:
        """Train until the planned step; return why the budget guard stopped early (None when it did not).

        The stop request is read (and agreed on by all ranks) before the first step, after every
        step and after the last one, so a stop that arrives during the last step still ends here
        and nothing downstream (export, evaluation, publishing) starts.

        Raises:
            Preempted: `stop` was requested (SIGTERM: exit 3; Ctrl-C: exit 130) after the checkpoint was saved.
        """
        if self._stop_agreed(stop):  # asked for while the model was built
            raise self._preempted(stop, f"before step {self.state.step + 1} of {self.total_steps}")
        # The guard also runs before the first step: a run re-entered with the budget spent trains nothing.
        if not self.done and self.over_budget():
            return self.stop_early()
        while not self.done:
            pause_point("train:step")
            self.log(self.step())
            stopping = self._stop_agreed(stop)
            over_budget = self.over_budget()
            pause_point("train:save")
            self.maybe_save(force=stopping or over_budget)
            if stopping:  # the caller closes the trainer (`loop.train`'s `finally`)
                raise self._preempted(stop, f"after saving step {self.state.step} of {self.total_steps}")
            if over_budget:
                return self.stop_early()
        if self._stop_agreed(stop):  # arrived during the last step: its checkpoint is saved, export waits
            raise self._preempted(stop, f"after saving step {self.state.step} of {self.total_steps}")
        return None

    def _stop_agreed(self, stop: StopRequest) -> bool:
        """Whether any rank was asked to stop (collective)."""
        return bool(all_sum([float(stop.requested)], self.dist.device)[0])

    @staticmethod
    def _preempted(stop: StopRequest, when: str) -> Preempted:
        return Preempted(f"training stopped by {stop.signal_name or 'SIGTERM'} {when}",
                         hint="run the same command again to resume from the last checkpoint",
                         exit_code=EXIT_INTERRUPTED if stop.signal_name == "Ctrl-C" else EXIT_TRANSIENT)

    def close(self) -> None:
        """Close the display and the metrics sinks (writes `loss.png`); idempotent."""
        if self.dist.is_rank0 and self.hooks.display is not None:
            self.hooks.display.close()
        self.metrics.close()

    def finish(self, stopped_early: str | None) -> TrainResult:
        """Close the logs and export the model to `<run_dir>/export/` (skipped when already exported).

        Collective. The new export is written beside the old one (`.export.next`), then swapped in,
        so a failed export leaves the previous one in place.
        """
        self.close()
        if stopped_early is None and self.dist.is_rank0 and self.hooks.cost_guard is not None:
            self.hooks.cost_guard.clear_stop()
        export_dir = self.run_dir / EXPORT_DIR
        # A process that resumed at the last step trained nothing itself: report the run's last logged loss.
        loss = self.loss if self.state.step > self.start_step else self._last_logged("train/loss")
        result = TrainResult(steps=self.state.step, final_loss=float("nan") if loss is None else loss,
                             export_dir=export_dir,
                             resumed_from=self.resumed_from, total_steps=self.total_steps, stopped_early=stopped_early,
                             val_loss=self.val_loss)
        if self.resumed_from == self.state.step and (export_dir / EXPORT_INFO_NAME).exists():
            logger.info("already trained and exported: %s", export_dir)
            loss, val_loss = self._last_logged("train/loss"), self._last_logged("val/loss")
            return replace(result, final_loss=self.loss if loss is None else loss, val_loss=val_loss)
        try:
            self._export(export_dir)  # while the last step's checkpoint is written (`train.async_save`)
        finally:
            self._complete_save(final=False)
            self.checkpoints.close()
        return result

    def _export(self, export_dir: Path) -> None:
        staged = export_dir.with_name(f".{export_dir.name}.next")
        pause_point("train:export")  # a stop during the export ends it at once; the staged copy is redone
        if self.dist.is_rank0:
            shutil.rmtree(staged, ignore_errors=True)  # left by an export that failed
        dist.barrier()
        with writing_to(export_dir):  # a full disk during the export names it
            export_hf(self.built.model, self.built.config, out_dir=staged,
                      tokenizer_dir=self.run_dir / TOKENIZER_DIR, base_dir=self.built.base_dir,
                      is_lora=self.cfg.method == "lora",
                      base_tokenizer=self.spec.model.tokenizer in (None, self.spec.model.base))
        if self.dist.is_rank0:
            stale = export_dir.with_name(f".{export_dir.name}.stale")
            shutil.rmtree(stale, ignore_errors=True)
            with deferred():  # the two renames never stop halfway
                if export_dir.exists():
                    export_dir.rename(stale)
                staged.rename(export_dir)
            shutil.rmtree(stale, ignore_errors=True)
            logger.info("export in place: %s", export_dir)
        dist.barrier()

    def _last_logged(self, key: str) -> float | None:
        """The last logged value of `key` (a finished run re-entered trains no step of its own)."""
        for record in reversed(read_jsonl(self.run_dir / LOGS_DIR / METRICS_NAME)):
            if (value := record.get(key)) is not None:
                return float(value)
        return None
