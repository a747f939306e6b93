"""Time model: training, evaluation and the fixed overheads a GPU machine is paid for.

Inputs: the `Workload` (tokens, eval suites), the model shape, one GPU's `GpuSpec`, the method
and GPU count, and `Calibration` (budget/data/calibration.toml: achieved MFU per GPU, sampler
efficiency, offload rates, overheads; placeholders until the GPU benchmark measures them).

- Training: FLOPs per token from `budget.flops.train_flops_per_token` (6N + bidirectional
  attention + masked lm_head), divided by GPUs x peak x MFU; MFU is the trainer's own `perf/mfu`
  convention, calibrated at a stated checkpointing share and compile setting;
  `recompute_flops_per_token` (the checkpointed layers' second forward, the loss chunk's lm_head)
  and `[compile]` convert it to the job's setting. Per micro-step the slowest of
  compute, FSDP all-gathers over the GPU link, and (full_offload) host-to-GPU copies; per step the
  gradient reduce-scatter and the optimizer (HBM-bound on the GPU, or the CPU AdamW).
- Evaluation: the sampler's forwards (reference: `steps` full forwards; fast: one full forward
  per block plus `block/tokens_per_step` forwards of the block, and of what follows it unless
  dual-cached), each the slowest of compute, reading the bf16 weights and (without CUDA graphs)
  an eager forward's launch-bound floor; batches dealt out to one process per GPU.
- Overheads: provisioning, image pull, base-model download, data prep, training start-up (model
  build, compile warm-up), checkpoint and export writes, uploads to `artifacts.destinations`;
  spot runs add the expected restart share. Checkpoints count only their exposed part
  (`budget.checkpoints.plan_saves`: sync or async, the interval resolved for the offer when
  `train.save_every_steps` is `auto`).
"""

from __future__ import annotations

import functools
import math
import tomllib
from dataclasses import dataclass, field
from typing import Any

from budget.checkpoints import SavePlan, checkpoint_bytes, mtbf_hours, plan_saves
from budget.flops import forward_flops_per_token, recompute_flops_per_token, train_flops_per_token
from budget.gpus import DATA_DIR, GpuSpec
from budget.memory import MemoryConstants
from budget.shape import ModelShape
from budget.tokens import Workload
from dream_job.spec import JobSpec


@dataclass(frozen=True)
class MfuPoint:
    """A calibrated MFU and the trainer setting it was measured (or assumed) with.

    Attributes:
        checkpointed_fraction: Share of decoder layers recomputed in backward (1.0: all).
        compiled: Whether the decoder layers were compiled (`train.compile`).
    """

    mfu: float
    measured: bool
    checkpointed_fraction: float
    compiled: bool


@dataclass(frozen=True)
class Calibration:
    """The parsed budget/data/calibration.toml."""

    raw: dict[str, Any]

    @property
    def date(self) -> str:
        return str(self.raw["date"])

    def train_mfu(self, gpu: str, method: str) -> MfuPoint:
        """Return the calibrated MFU of a GPU and method and the setting it holds for; measured values win."""
        measured = self.raw.get("measured", {}).get(f"{gpu}.{method}")
        if measured is not None:
            return MfuPoint(mfu=float(measured["mfu"]), measured=True,
                            checkpointed_fraction=float(measured.get("checkpointed_fraction", 1.0)),
                            compiled=bool(measured.get("compile", False)))
        mfu = self.raw["train_mfu"][gpu] * self.raw["method_factor"][method]
        return MfuPoint(mfu=mfu, measured=False, checkpointed_fraction=1.0, compiled=False)

    def section(self, name: str) -> dict[str, Any]:
        return self.raw[name]

    def memory_constants(self) -> MemoryConstants:
        return MemoryConstants(**self.raw["memory"])


@functools.cache
def calibration() -> Calibration:
    """Return the shipped calibration (read once)."""
    with open(DATA_DIR / "calibration.toml", "rb") as f:
        return Calibration(tomllib.load(f))


@dataclass(frozen=True)
class TimeEstimate:
    """Seconds of one run on one offer, by part."""

    steps: int
    train_s: float
    eval_s: float
    overheads_s: dict[str, float] = field(default_factory=dict)
    mfu: float = 0.0
    mfu_measured: bool = False
    spot_extra_s: float = 0.0
    saves: SavePlan | None = None

    @property
    def total_s(self) -> float:
        return self.train_s + self.eval_s + sum(self.overheads_s.values()) + self.spot_extra_s


def total_steps(spec: JobSpec, rows: int) -> int:
    """Optimizer steps of the run: full global batches per epoch x epochs, capped by `max_steps`."""
    steps = rows // spec.train.global_batch_size * spec.train.epochs
    return min(steps, spec.train.max_steps) if spec.train.max_steps else steps


def train_seconds(spec: JobSpec, shape: ModelShape, work: Workload, gpu: GpuSpec, *, method: str, num_gpus: int,
                  trainable: int, cal: Calibration) -> tuple[int, float, float, bool]:
    """Return (steps, seconds, MFU, MFU measured) of the training loop."""
    train, n, p = spec.train, num_gpus, shape.num_params
    steps = total_steps(spec, work.rows)
    point = cal.train_mfu(gpu.name, method)
    dims = {"hidden": shape.hidden, "intermediate": shape.intermediate, "num_layers": shape.num_layers,
            "num_heads": shape.num_heads, "num_kv_heads": shape.num_kv_heads, "vocab": shape.vocab,
            "seq_len": round(work.mean_length)}
    per_token = train_flops_per_token(**dims)
    # The calibrated MFU fixes the hardware rate (model + recompute FLOPs per second) at the
    # setting it was measured with; the job's own checkpointing and compile setting convert it.
    at_point = recompute_flops_per_token(**dims, checkpointed_layers=point.checkpointed_fraction * shape.num_layers)
    hardware_rate = point.mfu * (per_token + at_point) / per_token
    if train.compile != point.compiled:
        factor = float(cal.section("compile")["hardware_rate_factor"])
        hardware_rate *= factor if train.compile else 1 / factor
    recompute = recompute_flops_per_token(**dims, checkpointed_layers=train.num_checkpointed_layers(shape.num_layers))
    mfu = min(hardware_rate * per_token / (per_token + recompute), 0.75)
    micro_tokens = train.micro_batch_size * work.mean_length
    compute = micro_tokens * per_token / (gpu.bf16_tflops * 1e12 * mfu)
    share = (n - 1) / n
    all_gather = 2 * 2 * p * share / (gpu.link_gb_s * 1e9)  # bf16 params, forward and backward
    host_copies = 2 * 4 * p / n / (gpu.pcie_gb_s * 1e9) if method == "full_offload" else 0.0
    micro = max(compute, all_gather, host_copies)
    accumulation = train.global_batch_size // (train.micro_batch_size * n)
    reduce_scatter = 4 * trainable * share / (gpu.link_gb_s * 1e9)
    if method == "full_offload":
        optimizer = p / cal.section("offload")["cpu_adam_params_per_s"] + 4 * p / n / (gpu.pcie_gb_s * 1e9)
    else:
        # Bytes moved per param: foreach AdamW reads p, g, m, v and writes p, m, v (+ its temporary);
        # torchao's 8-bit step took 0.26 s for Dream 7B on one H100 (probe), ~80 B/param at 70 %.
        touched = {"full": 36 * p, "full_8bit": 80 * p}.get(method, 36 * trainable) / n
        optimizer = touched / (gpu.mem_bw_gb_s * 1e9 * 0.7)
    return steps, steps * (accumulation * micro + reduce_scatter + optimizer), mfu, point.measured


def eval_seconds(spec: JobSpec, shape: ModelShape, work: Workload, gpu: GpuSpec, *, num_gpus: int,
                 cal: Calibration) -> float:
    """Return the seconds the sampler needs for every suite and evaluated model on `num_gpus` GPUs.

    `dream-job eval` runs `eval.processes` processes (default: one per GPU), each with a whole
    model, and deals each suite's batches out in turn (`dream_job/eval/shards.py`); a model is
    done when its busiest process is. Each forward costs the slowest of its compute (batch x
    tokens run x FLOPs per token at the calibrated MFU), reading the bf16 weights (at the
    calibrated bandwidth share), and, without CUDA graphs, the launch-bound floor of an eager forward.
    """
    ev, sampler, cfg = spec.eval, spec.eval.sampler, cal.section("eval")
    peak, weights = gpu.bf16_tflops * 1e12 * cfg["mfu"], 2 * shape.num_params
    weight_read = weights / (gpu.mem_bw_gb_s * 1e9 * cfg["bandwidth_efficiency"])
    floor = 0.0 if sampler.cuda_graphs else float(cfg["eager_forward_s"])
    processes = max(1, min(ev.processes or num_gpus, num_gpus))
    busy = [0.0] * processes
    for suite in work.suites:
        context = sampler.padded_prompt_length(round(suite.prompt_tokens)) + sampler.gen_length
        per_token = forward_flops_per_token(matmul_params=shape.forward_matmul_params, hidden=shape.hidden,
                                            num_layers=shape.num_layers, context=context)
        if sampler.mode == "reference":
            forwards = [context] * sampler.steps
        else:
            block = sampler.block_length
            steps_per_block = math.ceil(block / cfg["fast_tokens_per_step"])
            forwards = []
            for start in range(0, sampler.gen_length, block):
                # Later steps run the block (dual cache) or the block and all that follows, plus one position.
                window = min(block, sampler.gen_length - start) if sampler.dual_cache else sampler.gen_length - start
                forwards += [context] + [window + 1] * (steps_per_block - 1)
        full_batches, rest = divmod(suite.items, ev.batch_size)
        for index, batch in enumerate([ev.batch_size] * full_batches + ([rest] if rest else [])):
            busy[index % processes] += sum(max(batch * tokens * per_token / peak, weight_read, floor)
                                           for tokens in forwards)
    return len(ev.models) * max(busy)


def save_plan(spec: JobSpec, shape: ModelShape, *, method: str, steps: int, step_s: float, trainable: int,
              num_gpus: int, cloud: str, spot: bool, cal: Calibration) -> SavePlan:
    """Return the run's checkpoint saves on this offer: interval (`auto` resolved), count and exposed seconds."""
    train, over, rates = spec.train, cal.section("overheads"), cal.section("checkpoint")
    ckpt = checkpoint_bytes(shape, method, trainable, cal.section("memory")["adam8bit_bytes_per_param"])
    mtbf = mtbf_hours(cal.section("preemption"), cloud=cloud, spot=spot, num_gpus=num_gpus) * 3600
    # A background write serialises tensors already in host RAM; a synchronous one copies each from the GPU first.
    write = rates["async_write_gb_per_s"] if train.async_save else over["disk_write_gb_per_s"]
    return plan_saves(steps=steps, step_s=step_s, ckpt_bytes=ckpt, num_gpus=num_gpus, every=train.save_every_steps,
                      async_save=train.async_save, write_gb_per_s=write, stage_gb_per_s=rates["stage_gb_per_s"],
                      export_s=2 * shape.num_params / (over["disk_write_gb_per_s"] * 1e9), mtbf_s=mtbf)


def overhead_seconds(spec: JobSpec, shape: ModelShape, *, method: str, steps: int, trainable: int,
                     cal: Calibration, saves: SavePlan) -> dict[str, float]:
    """Return the fixed and per-save seconds outside the training loop and the sampler (`saves`: `save_plan`)."""
    over, budget, artifacts = cal.section("overheads"), spec.budget, spec.artifacts
    download = budget.download_mb_per_s * 1e6
    upload = budget.upload_mb_per_s * 1e6
    disk = over["disk_write_gb_per_s"] * 1e9
    model_bytes = 2 * shape.num_params  # bf16 safetensors: 15.2 GB for Dream 7B
    ckpt = checkpoint_bytes(shape, method, trainable, cal.section("memory")["adam8bit_bytes_per_param"])
    parts = {
        "provision": float(over["provision_s"]),
        f"image pull at {budget.download_mb_per_s:g} MB/s": over["image_gb"] * 1e9 / download
        * over["image_extract_factor"],
        f"model download at {budget.download_mb_per_s:g} MB/s": model_bytes / download,
        "data prep": float(over["prep_s"]),
        "training start-up": float(over["train_startup_s"]),
        "checkpoint writes": saves.exposed_s,
        "export write": model_bytes / disk,
        "eval model loads": len(spec.eval.models) * float(over["eval_load_s"]) if spec.eval.suites else 0.0,
    }
    if artifacts.destinations:
        # A checkpoint is uploaded after a save only: never more uploads than saves; with
        # `train.save_every_steps: auto`, after every save (`dream_job.train_hooks.sync_checkpoint`).
        every = artifacts.sync_every_steps
        syncs = min(math.ceil(steps / every), saves.saves) if every and steps else 0
        if every and spec.train.save_every_steps == "auto":
            syncs = saves.saves
        parts[f"upload export at {budget.upload_mb_per_s:g} MB/s"] = len(artifacts.destinations) * model_bytes / upload
        parts[f"upload {syncs} checkpoints at {budget.upload_mb_per_s:g} MB/s"] = syncs * ckpt / upload
    return parts


def estimate_time(spec: JobSpec, shape: ModelShape, work: Workload, gpu: GpuSpec, *, method: str, num_gpus: int,
                  spot: bool, cloud: str, cal: Calibration) -> TimeEstimate:
    """Return the wall-clock of the whole run on `num_gpus` x `gpu` with `method`."""
    is_lora = method == "lora"
    trainable = shape.lora_params(spec.train.lora.rank, list(spec.train.lora.targets)) if is_lora else shape.num_params
    steps, train_s, mfu, measured = train_seconds(spec, shape, work, gpu, method=method, num_gpus=num_gpus,
                                                  trainable=trainable, cal=cal)
    eval_s = eval_seconds(spec, shape, work, gpu, num_gpus=num_gpus, cal=cal) if spec.eval.suites else 0.0
    saves = save_plan(spec, shape, method=method, steps=steps, step_s=train_s / max(steps, 1), trainable=trainable,
                      num_gpus=num_gpus, cloud=cloud, spot=spot, cal=cal)
    overheads = overhead_seconds(spec, shape, method=method, steps=steps, trainable=trainable, cal=cal, saves=saves)
    base = TimeEstimate(steps=steps, train_s=train_s, eval_s=eval_s, overheads_s=overheads, mfu=mfu,
                        mfu_measured=measured)
    extra = base.total_s * cal.section("spot")["restart_fraction"] if spot else 0.0
    return TimeEstimate(steps=steps, train_s=train_s, eval_s=eval_s, overheads_s=overheads, mfu=mfu,
                        mfu_measured=measured, spot_extra_s=extra, saves=saves)
