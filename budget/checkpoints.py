"""Checkpoint cadence and cost: the save interval (Young–Daly), the number of saves, their exposed time.

A save costs the run the part of it that training does not overlap:

- synchronous (`train.async_save: false`): the whole write, `bytes / write rate`;
- asynchronous: the staging copy (every rank copies its shards to host RAM, GPU->host, at the
  calibrated staging rate; training waits for it), plus any wait for the previous save's write
  when saves come faster than a write takes. The last save of the run overlaps the export only
  (`dream_job/train/trainer.py` waits for it after exporting).

`train.save_every_steps: auto` takes the interval that minimises the expected loss to
preemptions (Young 1974, Daly 2006): `tau = sqrt(2 * C * M)`, C the exposed cost of one save
and M the mean time between preemptions of the offer (`[preemption]` in calibration.toml). An
asynchronous save is never started more often than its write takes (the next would only wait).
The run also saves at its last step and whenever it is stopped (SIGTERM, Ctrl-C, budget), so an
offer that is rarely preempted saves once.

Host RAM: the asynchronous save keeps one staged copy of every rank's shards for the whole run
(`staging_host_bytes`), beside what `budget.memory.host_bytes` counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from budget.shape import ModelShape

# Per GPU: 419 unexpected interruptions in 54 days of training on 16,384 H100 GPUs (Llama 3 paper,
# Dubey et al. 2024, section 3.3.4): 16,384 x 54 x 24 / 419 = 50,676 GPU-hours between failures.
# One home for the fallback used when a cloud has no `[preemption]` row of its own.
ON_DEMAND_GPU_MTBF_HOURS = 50_676.0


def checkpoint_bytes(shape: ModelShape, method: str, trainable: int, adam8bit: float) -> float:
    """Bytes of one DCP checkpoint: model state dict (master dtype) + optimizer states (no grads)."""
    p = shape.num_params
    if method == "full_8bit":
        return (2 + adam8bit) * p
    if method == "lora":
        return 2 * p + 12 * trainable  # frozen bf16 base is in the model state dict too
    return 12 * p


def young_daly_interval_s(save_cost_s: float, mtbf_s: float) -> float:
    """Return the checkpoint interval that minimises the expected loss: sqrt(2 x save cost x MTBF), seconds."""
    return math.sqrt(2.0 * save_cost_s * mtbf_s)


def mtbf_hours(preemption: dict[str, Any], *, cloud: str, spot: bool, num_gpus: int) -> float:
    """Return the mean hours between interruptions of one machine of `num_gpus` GPUs on `cloud`.

    Spot: the cloud's `spot_hours` row (`default` when the cloud has none). On-demand: hardware
    failures only, `gpu_hours` per GPU divided by the machine's GPUs.
    """
    if spot:
        rows = preemption["spot_hours"]
        return float(rows.get(cloud, rows["default"]))
    return float(preemption.get("on_demand_gpu_hours", ON_DEMAND_GPU_MTBF_HOURS)) / num_gpus


def staging_host_bytes(ckpt_bytes: float, *, async_save: bool) -> float:
    """Return the host RAM the asynchronous save's staged copy holds on the node (all ranks): 0 when synchronous."""
    return ckpt_bytes if async_save else 0.0


@dataclass(frozen=True)
class SavePlan:
    """How often a run saves and what its saves cost in wall-clock.

    Attributes:
        every_steps: Steps between saves (`train.save_every_steps`, resolved when `auto`).
        saves: Saves of the run, the last step's included.
        write_s: Seconds to write one checkpoint (all ranks, the whole machine's write rate).
        blocking_s: Seconds training waits for one save when nothing else is queued (async: staging; sync: write).
        exposed_s: Seconds the saves add to the run in all.
        mtbf_s: Mean seconds between preemptions used for `auto` (None for a fixed interval).
    """

    every_steps: int
    saves: int
    write_s: float
    blocking_s: float
    exposed_s: float
    mtbf_s: float | None


def plan_saves(*, steps: int, step_s: float, ckpt_bytes: float, num_gpus: int, every: int | str, async_save: bool,
               write_gb_per_s: float, stage_gb_per_s: float, export_s: float, mtbf_s: float) -> SavePlan:
    """Return the save plan of a run of `steps` steps of `step_s` seconds each.

    Args:
        steps: Optimizer steps of the run.
        step_s: Seconds of one step.
        ckpt_bytes: Bytes of one checkpoint (all ranks).
        num_gpus: Ranks; each stages its own 1/num_gpus of the checkpoint, all at once.
        every: `train.save_every_steps`: a step count, or `auto` (Young–Daly with `mtbf_s`).
        async_save: `train.async_save`.
        write_gb_per_s: The machine's checkpoint write rate.
        stage_gb_per_s: One rank's GPU->host staging rate (async only).
        export_s: Seconds of the export the last asynchronous save overlaps.
        mtbf_s: Mean seconds between preemptions of the offer.
    """
    write_s = ckpt_bytes / (write_gb_per_s * 1e9)
    stage_s = ckpt_bytes / num_gpus / (stage_gb_per_s * 1e9)
    blocking_s = stage_s if async_save else write_s
    if every == "auto":
        interval_s = young_daly_interval_s(blocking_s, mtbf_s)
        if async_save:
            interval_s = max(interval_s, write_s)
        every_steps = max(1, min(steps, math.floor(interval_s / step_s))) if steps else 1
    else:
        every_steps = int(every)
    mtbf = mtbf_s if every == "auto" else None
    if not steps:
        return SavePlan(every_steps, 0, write_s, blocking_s, 0.0, mtbf)
    periodic = (steps - 1) // every_steps  # saves before the last step; the last step always saves
    saves = periodic + 1
    if not async_save:
        return SavePlan(every_steps, saves, write_s, blocking_s, saves * write_s, mtbf)
    # A save waits for the previous write when it comes sooner than that write takes; the last one
    # then writes while the model is exported, and the run waits for what is left.
    queued = max(0.0, write_s - every_steps * step_s)
    last_queued = max(0.0, write_s - (steps - periodic * every_steps) * step_s) if periodic else 0.0
    exposed = (periodic * stage_s + max(0, periodic - 1) * queued + last_queued + stage_s
               + max(0.0, write_s - export_s))
    return SavePlan(every_steps, saves, write_s, blocking_s, exposed, mtbf)
