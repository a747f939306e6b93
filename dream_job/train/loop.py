"""`dream-job train`: the masked-diffusion SFT loop with exact resume.

Reads `<run_dir>/data/` (written by prep), trains with FSDP2, writes
`<run_dir>/checkpoints/step-NNNNNN/` every `train.save_every_steps` and at the end (DCP
shards, `COMPLETE` last), logs to `<run_dir>/logs/`, and exports the final model to
`<run_dir>/export/`. A re-run resumes from the newest complete checkpoint; every random draw
is a function of (seed, step, micro-batch), so a resumed run repeats the uninterrupted one.
SIGTERM (spot preemption) saves at the next step boundary and exits with code 3; Ctrl-C
(SIGINT) saves the same way and exits with code 130. A full disk while checkpointing is reported
as such, with the half-written checkpoint removed.
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from budget.flops import peak_flops, train_flops_per_token
from dream_job.costs import open_costs
from dream_job.data.prep import read_column, read_report
from dream_job.errors import EXIT_INTERRUPTED, EXIT_TRANSIENT, CheckpointError, DiskFullError, DreamJobError
from dream_job.progress import TrainingView
from dream_job.rundir import LOGS_DIR, METRICS_NAME, is_disk_full, read_jsonl
from dream_job.spec import JobSpec
from dream_job.train.batches import BatchPlan, collate, hash_seed
from dream_job.train.build import Built, build_training
from dream_job.train.checkpoint import CheckpointManager, DictState, ModelOptimizerState, TrainState
from dream_job.train.distributed import Dist, close_distributed, init_distributed
from dream_job.train.export import export_hf
from dream_job.train.metrics import MetricsLogger

logger = logging.getLogger(__name__)

TRAIN_STATE_VERSION = 1


@dataclass(frozen=True)
class TrainResult:
    """What a finished training run produced."""

    steps: int
    final_loss: float
    export_dir: Path
    resumed_from: int | None
    total_steps: int = 0
    stopped_early: str | None = None  # why the budget guard stopped before `total_steps`


class Preempted(DreamJobError):
    """SIGTERM or Ctrl-C arrived; a checkpoint was saved and the run can resume."""


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Return the learning-rate multiplier: linear warm-up, then half-cosine down to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class _StopFlag:
    """Set by SIGTERM or SIGINT (Ctrl-C); checked (and agreed on by all ranks) at each step boundary.

    A second Ctrl-C while waiting for the step to end stops at once (the last checkpoint stays).
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        if signum == signal.SIGINT:
            logger.warning("Ctrl-C: saving a checkpoint at the end of this step (press again to stop at once)")

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _load_prepared(spec: JobSpec) -> tuple[Any, dict[str, Any]]:
    import datasets

    data_dir = spec.run_dir() / "data"
    report = read_report(data_dir)
    if report is None:
        raise DreamJobError(
            f"no prepared data in `{data_dir}`",
            hint="run `dream-job prep` with the same job file and `--set` options first",
        )
    tokenizer = spec.model.tokenizer or spec.model.base
    if report["tokenizer"] != tokenizer:
        raise DreamJobError(
            f"the data in `{data_dir}` was prepared with the tokenizer `{report['tokenizer']}`, "
            f"but this job uses `{tokenizer}`",
            hint="re-run `dream-job prep` with this job file, or use another `artifacts.run_dir`",
        )
    return datasets.load_from_disk(str(data_dir / "train")), report


def _check_token_ids(dataset: Any, built: Built) -> None:
    largest = max(max(ids) for ids in dataset["input_ids"])
    if largest >= built.config.vocab_size:
        raise DreamJobError(
            f"the prepared data has token id {largest}, beyond the model's vocabulary ({built.config.vocab_size})",
            hint="the data was tokenized for another model: re-run `dream-job prep` with this job's `model.base`",
        )


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def _train_step(built: Built, plan: BatchPlan, dataset: Any, spec: JobSpec, dist_info: Dist, step: int
                ) -> tuple[float, int, float]:
    """Run one optimizer step; return (mean micro-batch loss, tokens on all ranks, grad norm)."""
    model, train = built.model, spec.train
    micros = plan.micro_batches(step, dist_info.rank)
    loss_sum, tokens = 0.0, 0
    for micro_index, row_ids in micros:
        rows = dataset[row_ids]
        batch = collate(
            [{"input_ids": ids, "prompt_length": p} for ids, p in zip(rows["input_ids"], rows["prompt_length"])],
            cutoff=train.cutoff, pad_id=built.config.pad_token_id, eos_id=built.config.eos_token_id,
            seed=train.seed, step=step, micro_index=micro_index, device=dist_info.device,
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
        (loss / plan.accumulation_steps).backward()
        loss_sum += float(loss.detach())
        tokens += batch.num_tokens
    grad_norm = torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], train.grad_clip)
    if hasattr(grad_norm, "full_tensor"):
        grad_norm = grad_norm.full_tensor()
    built.optimizer.step()
    built.optimizer.zero_grad(set_to_none=True)
    total_loss, total_tokens = _all_sum([loss_sum, tokens], dist_info.device)
    num_micros = plan.accumulation_steps * dist_info.world_size
    return total_loss / num_micros, int(total_tokens), float(grad_norm)


def train(spec: JobSpec) -> TrainResult:
    """Train the job's model on its prepared data, resuming from the newest complete checkpoint.

    Writes checkpoints, logs and the final export under the run dir (see the module docstring).

    Raises:
        DreamJobError: Data not prepared or prepared for another tokenizer, base model missing,
            method impossible on this hardware, or CUDA out of memory (with the next setting to try).
        Preempted: SIGTERM; the checkpoint is saved (exit code 3).
    """
    dataset, report = _load_prepared(spec)
    dist_info = init_distributed(spec.train.device)
    stop = _StopFlag()
    succeeded = False
    try:
        result = _run(spec, dataset, report, dist_info, stop)
        succeeded = True
        return result
    except CheckpointError as exc:
        if is_disk_full(exc) or any("No space left" in line or "unexpected pos" in line for line in exc.caused_by):
            raise _disk_full(spec) from None
        raise
    except torch.OutOfMemoryError:
        peak = torch.cuda.max_memory_allocated() / 2**30
        raise DreamJobError(
            f"CUDA ran out of memory at {peak:.1f} GiB with `train.method` `{spec.train.method}`, "
            f"`train.micro_batch_size` {spec.train.micro_batch_size}, `data.max_length` {spec.data.max_length}",
            hint=_smaller_setting(spec),
        ) from None
    finally:
        stop.restore()
        close_distributed(succeeded=succeeded)


def _sync_targets(spec: JobSpec) -> list[tuple[str, Any]]:
    """Destinations that can hold checkpoints (`s3://`, `file://`), with their S3 settings."""
    from dream_job.artifacts import S3Settings

    return [(d, S3Settings(endpoint_url=spec.artifacts.s3_endpoint_url) if d.startswith("s3://") else None)
            for d in spec.artifacts.destinations if d.startswith(("s3://", "file://"))]


def _sync_checkpoint(spec: JobSpec, folder: Path, step: int, dist_info: Dist, *, final: bool) -> None:
    """Upload a just-saved checkpoint every `artifacts.sync_every_steps` (and before a preempted exit)."""
    every = spec.artifacts.sync_every_steps
    if every is None or not (final or step % every == 0) or not dist_info.is_rank0:
        return
    from dream_job.artifacts import sync_checkpoint
    from dream_job.pipeline import run_id

    for destination, s3 in _sync_targets(spec):
        sync_checkpoint(folder, destination, run_id=run_id(spec), s3=s3)
        logger.info("synced %s to %s", folder.name, destination)


def _fetch_synced_checkpoint(spec: JobSpec, root: Path, dist_info: Dist) -> None:
    """On a new machine with no local checkpoint, download the newest one a previous machine synced."""
    if spec.artifacts.sync_every_steps is None or not _sync_targets(spec):
        return
    if dist_info.is_rank0:
        from dream_job.artifacts import fetch_latest_checkpoint
        from dream_job.pipeline import run_id

        for destination, s3 in _sync_targets(spec):
            step = fetch_latest_checkpoint(destination, run_id(spec), root, s3=s3)
            if step is not None:
                logger.info("fetched checkpoint step %d from %s", step, destination)
                break
    dist.barrier()


def _disk_full(spec: JobSpec) -> DiskFullError:
    """Name the full disk and remove the torn checkpoint a failed save left (`.step-N.partial`)."""
    root = spec.run_dir() / "checkpoints"
    for partial in root.glob(".step-*.partial"):
        shutil.rmtree(partial, ignore_errors=True)
    free_mib = shutil.disk_usage(root if root.exists() else spec.run_dir()).free / 2**20
    return DiskFullError(
        f"disk full at `{root}` while saving a checkpoint ({free_mib:.0f} MiB free)",
        hint="free space there (or lower `train.keep_checkpoints`, or use a larger disk), then run the same "
             "command again: it resumes from the last complete checkpoint",
    )


def _plan(lengths: list[int], spec: JobSpec, world_size: int) -> BatchPlan:
    train = spec.train
    per_round = train.micro_batch_size * world_size
    if train.global_batch_size % per_round:
        raise DreamJobError(
            f"`train.global_batch_size` ({train.global_batch_size}) must be a multiple of `train.micro_batch_size` "
            f"x processes ({train.micro_batch_size} x {world_size})",
            hint=f"set `--set train.global_batch_size={per_round * max(1, train.global_batch_size // per_round)}` "
                 "or run on a number of GPUs that divides it",
        )
    if len(lengths) < train.global_batch_size:
        raise DreamJobError(
            f"only {len(lengths)} training rows were prepared, fewer than `train.global_batch_size` "
            f"({train.global_batch_size})",
            hint=f"set `--set train.global_batch_size={max(train.micro_batch_size, len(lengths) // per_round * per_round)}`"
                 " or lower `data.holdout_size`",
        )
    return BatchPlan(lengths, global_batch_size=train.global_batch_size, micro_batch_size=train.micro_batch_size,
                     world_size=world_size, seed=train.seed)


def _last_logged_loss(run_dir: Path, *, default: float) -> float:
    """The loss of the last logged step (a finished run re-entered trains no step of its own)."""
    for record in reversed(read_jsonl(run_dir / LOGS_DIR / METRICS_NAME)):
        loss = record.get("train/loss")
        if loss is not None:
            return float(loss)
    return default


def _smaller_setting(spec: JobSpec) -> str:
    train = spec.train
    if train.micro_batch_size > 1:
        return f"try `--set train.micro_batch_size={train.micro_batch_size // 2}`"
    if train.activation_checkpointing is not True:
        return "try `--set train.activation_checkpointing=true` (recompute every layer)"
    nxt = {"full": "full_8bit", "full_8bit": "full_offload", "full_offload": "lora"}.get(train.method)
    if nxt:
        return f"try `--set train.method={nxt}` (see `dream-job estimate` for what fits)"
    return f"try a shorter `data.max_length` (now {spec.data.max_length}) or a GPU with more memory"


def _run(spec: JobSpec, dataset: Any, report: dict[str, Any], dist_info: Dist, stop: _StopFlag) -> TrainResult:
    train, run_dir = spec.train, spec.run_dir()
    plan = _plan(read_column(dataset, "num_tokens"), spec, dist_info.world_size)
    total_steps = plan.steps_per_epoch * train.epochs
    if train.max_steps is not None:
        total_steps = min(total_steps, train.max_steps)
    try:
        built = build_training(spec, dist_info)
    except ValueError as exc:  # the model config or a setting the model cannot take
        raise DreamJobError(f"cannot build the model of `model.base` `{spec.model.base}` with this job's settings",
                            caused_by=[str(exc).splitlines()[0]],
                            hint="check the base model's `config.json` and the `model`/`train` settings") from None
    _check_token_ids(dataset, built)
    warmup = max(1, round(train.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        built.optimizer,
        lambda s: lr_factor(s, warmup_steps=warmup, total_steps=total_steps, min_ratio=train.min_lr_ratio),
    )
    state = TrainState(version=TRAIN_STATE_VERSION, step=0, tokens_seen=0, world_size=dist_info.world_size,
                       data_hash=report["inputs_hash"])
    states = {"model": ModelOptimizerState(built.model, built.optimizer), "scheduler": DictState(scheduler),
              "train": state}
    checkpoints = CheckpointManager(run_dir / "checkpoints", keep=train.keep_checkpoints)
    if checkpoints.latest_step() is None:
        _fetch_synced_checkpoint(spec, checkpoints.root, dist_info)
    resumed_from = checkpoints.latest_step()
    if resumed_from is not None:
        checkpoints.load(resumed_from, states)
        logger.info("resumed from %s", checkpoints.root / f"step-{resumed_from:06d}")
    metrics = MetricsLogger(run_dir, is_rank0=dist_info.is_rank0, total_steps=total_steps, resume_step=state.step)
    peak = peak_flops(torch.cuda.get_device_name(dist_info.device)) if dist_info.device.type == "cuda" else None
    cfg = built.config
    view = TrainingView(total_steps, state.step, enabled=dist_info.is_rank0)
    costs = open_costs(spec) if dist_info.is_rank0 else None
    started, start_step, loss = time.perf_counter(), state.step, float("nan")
    stopped_early = None
    # The guard also runs before the first step: a run re-entered with the budget spent trains nothing.
    over_at_start = costs is not None and state.step < total_steps and costs.must_stop()
    if _all_sum([float(over_at_start)], dist_info.device)[0]:
        stopped_early = costs.record_stop(state.step, total_steps) if costs is not None else "budget spent"
        logger.warning("%s", stopped_early)
    while state.step < total_steps and stopped_early is None:
        step_start = time.perf_counter()
        if dist_info.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dist_info.device)
        loss, tokens, grad_norm = _train_step(built, plan, dataset, spec, dist_info, state.step)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        state.step += 1
        state.tokens_seen += tokens
        seconds = time.perf_counter() - step_start
        done = state.step - start_step
        values = {
            "train/loss": loss, "train/grad_norm": grad_norm, "train/lr": lr,
            "perf/tokens_per_s": tokens / seconds,
            "time/eta_s": (time.perf_counter() - started) / done * (total_steps - state.step),
        }
        if dist_info.device.type == "cuda":
            values["mem/peak_gib"] = torch.cuda.max_memory_allocated(dist_info.device) / 2**30
            if peak:
                per_token = train_flops_per_token(
                    hidden=cfg.hidden_size, intermediate=cfg.intermediate_size, num_layers=cfg.num_hidden_layers,
                    num_heads=cfg.num_attention_heads, num_kv_heads=cfg.num_key_value_heads, vocab=cfg.vocab_size,
                    seq_len=round(tokens / (train.global_batch_size)),
                )
                values["perf/mfu"] = per_token * tokens / seconds / (peak * dist_info.world_size)
        if costs is not None and costs.usd_per_hour:
            values["cost/spent_yuan"] = costs.spent_yuan()
        view.update(state.step, values)
        if state.step % train.log_every_steps == 0 or state.step == total_steps:
            metrics.log(state.step, values)
        over_budget = costs is not None and costs.must_stop()
        stopping, over_budget = (bool(v) for v in _all_sum([float(stop.requested), float(over_budget)], dist_info.device))
        if stopping or over_budget or state.step % train.save_every_steps == 0 or state.step == total_steps:
            checkpoints.save(state.step, states)
            _sync_checkpoint(spec, checkpoints.folder(state.step), state.step, dist_info,
                             final=stopping or over_budget)
        if over_budget and not stopping:
            stopped_early = costs.record_stop(state.step, total_steps) if costs is not None else "budget spent"
            logger.warning("%s", stopped_early)
            break
        if stopping:
            view.close()
            metrics.close()
            by_ctrl_c = stop.signal_name == "Ctrl-C"
            raise Preempted(
                f"training stopped by {stop.signal_name or 'SIGTERM'} after saving step {state.step} of {total_steps}",
                hint="run the same command again to resume from that checkpoint",
                exit_code=EXIT_INTERRUPTED if by_ctrl_c else EXIT_TRANSIENT,
            )
    view.close()
    metrics.close()
    if costs is not None and stopped_early is None:
        costs.clear_stop()
    export_dir = run_dir / "export"
    if resumed_from == state.step and (export_dir / "dream_job_export.json").exists():
        logger.info("already trained and exported: %s", export_dir)
        return TrainResult(steps=state.step, final_loss=_last_logged_loss(run_dir, default=loss),
                           export_dir=export_dir, resumed_from=resumed_from, total_steps=total_steps,
                           stopped_early=stopped_early)
    # An export of an earlier, shorter run is replaced: write the new one, then drop the old.
    stale = export_dir.with_name(".export.stale")
    if dist_info.is_rank0 and export_dir.exists():
        shutil.rmtree(stale, ignore_errors=True)
        export_dir.rename(stale)
    dist.barrier()
    export_hf(built.model, built.config, out_dir=export_dir, tokenizer_dir=run_dir / "data" / "tokenizer",
              base_dir=built.base_dir, is_lora=train.method == "lora",
              base_tokenizer=spec.model.tokenizer in (None, spec.model.base))
    if dist_info.is_rank0:
        shutil.rmtree(stale, ignore_errors=True)
    return TrainResult(steps=state.step, final_loss=loss, export_dir=export_dir, resumed_from=resumed_from,
                       total_steps=total_steps, stopped_early=stopped_early)
