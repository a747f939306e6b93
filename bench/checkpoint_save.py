"""Checkpoint-save benchmark at Dream-7B's shape: synchronous vs asynchronous save, in one process.

Builds the trainer's own full_8bit model (`shard_model`, the plain module on one GPU) and
torchao 8-bit AdamW (`make_optimizer`) from Dream's published config with random weights, takes
one optimizer step so the 8-bit states exist, then saves the trainer's states
(`ModelOptimizerState`, scheduler, `TrainState`) with the product's `CheckpointManager`:

1. `sync`: `save()` (what the trainer did before `train.async_save`): blocking = total.
2. `async_cold`: `save_async()` with pinned staging, first save of the run (the pinned buffers are
   allocated and registered): blocking time, then micro-steps (eager forward + backward at 2048
   tokens) run while the shards are written, then `wait()`.
3. `async_warm`: the same again with the cached buffers (every later save of a run).
4. `async_pageable` (when time is left): `save_async()` into pageable memory (`pin_memory=False`).

Host memory: the bytes of the staging buffers (`CheckpointManager.staging_bytes`), and the
process's RSS before the first async save and after its staging (approximate: freed memory of the
synchronous save may be reused), and `VmHWM`. Micro-step time with no save running is the baseline of the overlap cost.
Checkpoints go to `--dir` (a tmpfs: the writer, not a disk, is measured) and are deleted after
each measurement.

    PYTHONPATH=. python bench/checkpoint_save.py --dir /mnt/ck --out-dir bench/results
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from budget.timing import calibration, checkpoint_bytes  # noqa: E402
from budget.shape import model_shape  # noqa: E402
from dream_job.model.dream import DreamConfig  # noqa: E402
from dream_job.spec import load_spec  # noqa: E402
from dream_job.train.build import make_optimizer, shard_model  # noqa: E402
from dream_job.train.checkpoint import CheckpointManager  # noqa: E402
from dream_job.train.state import DictState, ModelOptimizerState, TrainState  # noqa: E402
from dream_job.train.distributed import init_distributed  # noqa: E402

DREAM_CONFIG = REPO / "tests" / "fixtures" / "dream-hub" / "config.json"
LENGTH = 2048


def rss_gib() -> tuple[float, float]:
    """Return this process's resident set and its peak (`VmRSS`, `VmHWM`), GiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 2**20, int(fields["VmHWM"].split()[0]) / 2**20


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def micro_step(model, ids, loss_mask, generator) -> None:
    """The trainer's micro-step (masked chunked loss), backward; gradients dropped after."""
    loss, _ = model(ids, loss_mask_BL=loss_mask, attention_mask_BL=None, position_ids_BL=None, generator=generator,
                    time_eps=1e-3, weighting="cart", cart_p=0.1)
    loss.backward()
    for p in model.parameters():
        p.grad = None


def timed_steps(model, batch, count: int) -> list[float]:
    times = []
    for _ in range(count):
        torch.cuda.synchronize()
        start = time.perf_counter()
        micro_step(model, *batch)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def measure_async(manager: CheckpointManager, step: int, states, model, batch) -> dict:
    """Start an async save, train while it writes, wait; return blocking, overlap and total seconds."""
    before, _ = rss_gib()
    torch.cuda.synchronize()
    start = time.perf_counter()
    manager.save_async(step, states)
    blocking = time.perf_counter() - start
    staged, _ = rss_gib()
    overlapped = []
    while not manager.write_done():
        overlapped += timed_steps(model, batch, 1)
    written = time.perf_counter() - start
    folder = manager.wait()
    total = time.perf_counter() - start
    size = dir_bytes(folder)
    return {"blocking_s": blocking, "written_s": written, "total_s": total, "bytes": size,
            "staging_buffer_gib": manager.staging_bytes / 2**30,
            "rss_before_gib": before, "rss_after_staging_gib": staged, "staging_rss_gib": staged - before,
            "steps_during_write": len(overlapped),
            "step_s_during_write": sum(overlapped) / len(overlapped) if overlapped else None}


def main() -> None:
    """Run the measurements in order and print one JSON line each, then the ratios; write `--json`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, required=True, help="where checkpoints are written (a tmpfs)")
    parser.add_argument("--out-dir", type=Path, required=True,
                        help="writes checkpoint_save-<gpu>-<date>.json there (gpu: h100, h200, ...)")
    parser.add_argument("--budget-s", type=float, default=240.0, help="skip the optional pageable run after this")
    args = parser.parse_args()
    began = time.perf_counter()
    out: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": date.today().isoformat(),
                 "method": "full_8bit", "dir": str(args.dir), "command": " ".join(sys.argv)}
    print(json.dumps(out), flush=True)
    base = Path(tempfile.mkdtemp())
    shutil.copy(DREAM_CONFIG, base / "config.json")
    spec = load_spec(REPO / "jobs" / "dream-s1k.yaml", [
        f"model.base={base}", "model.init=random", "train.method=full_8bit", "train.device=cuda",
        "train.compile=false", "train.activation_checkpointing=true"])
    dist_info = init_distributed("cuda")
    config = DreamConfig.from_pretrained_dir(base)
    model = shard_model(spec, config, dist_info)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02) if param.dim() > 1 else param.fill_(1.0)
    optimizer = make_optimizer(spec, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    generator = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(0, 151643, (1, LENGTH), generator=generator, device="cuda")
    loss_mask = torch.zeros_like(ids, dtype=torch.bool)
    loss_mask[:, LENGTH // 10:] = True
    batch = (ids, loss_mask, generator)
    start = time.perf_counter()
    micro_step(model, *batch)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()  # creates the 8-bit states
    optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    out["first_step_s"] = time.perf_counter() - start
    states = {"model": ModelOptimizerState(model, optimizer), "scheduler": DictState(scheduler),
              "train": TrainState(data_hash="bench", step=1)}
    shape = model_shape(spec)
    out["model_bytes_expected"] = checkpoint_bytes(shape, "full_8bit", shape.num_params,
                                                   calibration().section("memory")["adam8bit_bytes_per_param"])
    baseline = timed_steps(model, batch, 6)[1:]
    out["step_s_alone"] = sum(baseline) / len(baseline)
    print(json.dumps({"step_s_alone": out["step_s_alone"], "first_step_s": out["first_step_s"]}), flush=True)

    def fresh(name: str, **kwargs) -> CheckpointManager:
        root = args.dir / name
        shutil.rmtree(root, ignore_errors=True)
        return CheckpointManager(root, keep=1, **kwargs)

    rss0, _ = rss_gib()
    out["rss_before_saves_gib"] = rss0
    manager = fresh("sync")
    torch.cuda.synchronize()
    start = time.perf_counter()
    folder = manager.save(1, states)
    out["sync"] = {"blocking_s": time.perf_counter() - start, "bytes": dir_bytes(folder),
                   "rss_after_gib": rss_gib()[0]}
    print(json.dumps({"sync": out["sync"]}), flush=True)
    shutil.rmtree(manager.root)

    manager = fresh("async", pin_memory=True)
    out["async_cold"] = measure_async(manager, 2, states, model, batch)
    print(json.dumps({"async_cold": out["async_cold"]}), flush=True)
    out["async_warm"] = measure_async(manager, 3, states, model, batch)
    print(json.dumps({"async_warm": out["async_warm"]}), flush=True)
    manager.close()
    shutil.rmtree(manager.root)
    gc.collect()
    out["rss_after_close_gib"] = rss_gib()[0]

    if time.perf_counter() - began < args.budget_s:
        manager = fresh("pageable", pin_memory=False)
        out["async_pageable"] = measure_async(manager, 4, states, model, batch)
        print(json.dumps({"async_pageable": out["async_pageable"]}), flush=True)
        manager.close()
        shutil.rmtree(manager.root)
    out["vm_hwm_gib"] = rss_gib()[1]

    sync_s, gb = out["sync"]["blocking_s"], out["sync"]["bytes"] / 1e9
    ratios = {
        "checkpoint_gb": gb,
        "sync_write_gb_per_s": gb / sync_s,
        "async_write_gb_per_s": gb / out["async_warm"]["written_s"],
        "stage_gb_per_s_pinned_warm": gb / out["async_warm"]["blocking_s"],
        "stage_gb_per_s_pinned_cold": gb / out["async_cold"]["blocking_s"],
        "sync_over_async_blocking_warm": sync_s / out["async_warm"]["blocking_s"],
        "sync_over_async_blocking_cold": sync_s / out["async_cold"]["blocking_s"],
        "staging_buffer_gib_over_checkpoint_gib": out["async_cold"]["staging_buffer_gib"] / (gb * 1e9 / 2**30),
        "staging_rss_gib_over_checkpoint_gib": out["async_cold"]["staging_rss_gib"] / (gb * 1e9 / 2**30),
    }
    if out["async_warm"]["step_s_during_write"]:
        ratios["step_slowdown_during_write"] = out["async_warm"]["step_s_during_write"] / out["step_s_alone"]
    if "async_pageable" in out:
        ratios["stage_gb_per_s_pageable"] = gb / out["async_pageable"]["blocking_s"]
    out["ratios"] = ratios
    out["elapsed_s"] = time.perf_counter() - began
    print(json.dumps({"ratios": ratios}), flush=True)
    gpu = next((g for g in ("h200", "h100", "a100", "l40s", "4090") if g in out["device"].lower()), "gpu")
    target = args.out_dir / f"checkpoint_save-{gpu}-{out['date']}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {target}", flush=True)


if __name__ == "__main__":
    main()
