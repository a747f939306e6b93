"""The rehearsal's measured stages next to what the estimate's models predict for them.

`estimates` asks `budget` (timing, memory, checkpoint sizes) about the run that was rehearsed,
for the rows it actually trained (`trained_rows`) on this machine's GPU (`device_gpu`); `table`
prints measured against estimated, one line per stage. The caller puts the repository on
`sys.path`.
"""

from __future__ import annotations

from typing import Any

from proc_tree import Gpu


def device_gpu(gpu: Gpu) -> str:
    """The `budget/data/gpus.csv` row of this machine's GPU (H100 on a CPU machine, for reference)."""
    name = gpu.name or ""
    return "H200" if "H200" in name else "H100"


def trained_rows(spec: Any, steps: int) -> list[int]:
    """Token counts of the rows the first `steps` optimizer steps train on (the trainer's own batch plan)."""
    import datasets

    from dream_job.data.prep import read_column
    from dream_job.train.batches import BatchPlan

    train = spec.train
    lengths = read_column(datasets.load_from_disk(str(spec.run_dir() / "data" / "train")), "num_tokens")
    plan = BatchPlan(lengths, global_batch_size=train.global_batch_size, micro_batch_size=train.micro_batch_size,
                     world_size=1, seed=train.seed)
    return [lengths[i] for step in range(steps) for _, rows in plan.micro_batches(step, 0) for i in rows]


def estimates(spec: Any, gpu_name: str, rows: list[int]) -> dict[str, Any]:
    """What the estimate's models predict for this run's stages on `gpu_name`, for the rows actually trained."""
    from budget.estimate import plan_memory
    from budget.gpus import resolve_gpu
    from budget.shape import model_shape
    from budget.timing import (
        calibration, checkpoint_bytes, eval_seconds, overhead_seconds, save_plan, train_seconds,
    )
    from budget.tokens import Workload, load_data_report, workload

    cal, gpu, shape = calibration(), resolve_gpu(gpu_name), model_shape(spec)
    report = load_data_report(spec.run_dir() / "data" / "data_report.json")
    full = workload(spec, report)
    trained = Workload(rows=len(rows), tokens_per_epoch=float(sum(rows)), mean_length=sum(rows) / len(rows),
                       suites=full.suites, source="rows trained", is_estimate=False)
    method, trainable = spec.train.method, shape.num_params
    steps, train_s, mfu, _ = train_seconds(spec.model_copy(update={"train": spec.train.model_copy(
        update={"max_steps": None, "epochs": 1})}), shape, trained, gpu, method=method, num_gpus=1,
        trainable=trainable, cal=cal)
    run_steps = spec.train.max_steps or steps
    saves = save_plan(spec, shape, method=method, steps=run_steps, step_s=train_s / max(steps, 1), trainable=trainable,
                      num_gpus=1, cloud="local", spot=False, cal=cal)
    over = overhead_seconds(spec, shape, method=method, steps=run_steps, trainable=trainable, cal=cal, saves=saves)
    memory = plan_memory(spec, method, 1, report)
    disk = cal.section("overheads")["disk_write_gb_per_s"] * 1e9
    ckpt = checkpoint_bytes(shape, method, trainable, cal.section("memory")["adam8bit_bytes_per_param"])
    return {
        "gpu": gpu.name, "steps": steps, "train_steps_s": train_s, "train_step_s": train_s / max(steps, 1),
        "mfu": mfu, "trained_tokens": sum(rows), "eval_s": eval_seconds(spec, shape, full, gpu, num_gpus=1, cal=cal),
        "overheads_s": over, "checkpoint_bytes": ckpt, "checkpoint_write_s": ckpt / disk,
        "export_bytes": 2 * shape.num_params, "peak_gib": memory.peak_gib, "phases_gib": memory.phases_gib,
        "host_gib": memory.host_gib,
    }


def part(overheads: dict[str, float], prefix: str) -> float:
    """The overhead whose name starts with `prefix` (names may carry the rate, `upload export at 50 MB/s`)."""
    return sum(v for k, v in overheads.items() if k.startswith(prefix))


def table(result: dict[str, Any]) -> str:
    """Measured vs estimated, one line per stage."""
    est, parts1, parts2 = result["estimate"], result["run1_train_parts"], result["run2_train_parts"]
    over = est["overheads_s"]
    steady = [s for p in (parts1, parts2) for k, s in p["step_intervals_s"].items()]
    lines = [f"{'stage':28s} {'wall s':>9s} {'est s':>9s} {'GPU GiB':>8s} {'RSS GiB':>8s} {'written GB':>10s}"]
    for stage in result["stages"]:
        name = stage["name"]
        if name.split(": ", 1)[-1].startswith("after") and stage["seconds"] < 0.5:
            continue  # the moment between a stage's end line and the next stage's start
        guess = {"run 1: prep": part(over, "data prep"), "run 2: eval": est["eval_s"] + part(over, "eval model loads"),
                 "run 2: publish": part(over, "upload export")}.get(name)
        gpu = "-" if stage["peak_gpu_gib"] is None else f"{stage['peak_gpu_gib']:.1f}"
        lines.append(f"{name:28s} {stage['seconds']:9.1f} {'-' if guess is None else f'{guess:.1f}':>9s} {gpu:>8s} "
                     f"{stage['peak_rss_gib']:8.1f} {stage['bytes_written'] / 1e9:10.2f}")
    saves = [*parts1["saves_s"].values(), *parts2["saves_s"].values()]
    lines.append(f"{'step (steady, mean)':28s} {sum(steady) / max(len(steady), 1):9.2f} {est['train_step_s']:9.2f}")
    lines.append(f"{'checkpoint save (mean)':28s} {sum(saves) / max(len(saves), 1):9.2f} "
                 f"{est['checkpoint_write_s']:9.2f}")
    if "export_s" in parts2:
        lines.append(f"{'export':28s} {parts2['export_s']:9.2f} {part(over, 'export write'):9.2f}")
    lines.append(f"estimate peak GPU {est['peak_gib']:.1f} GiB, host {est['host_gib']:.1f} GiB; trainer allocator "
                 f"peak {result['trainer_peak_alloc_gib']} GiB")
    return "\n".join(lines)
