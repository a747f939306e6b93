"""Compare `dream-job estimate`'s models with `bench/train_step.py` measurements (target: within ±15 %).

For every project-step line of the given JSON-lines files it rebuilds the measured setting as a
job (`jobs/dream-s1k.yaml` with the line's method, length, micro batch and `--set` overrides),
then asks budget/ for what it predicts on that GPU:

- time: `budget.timing.train_seconds` for a run whose every row has the measured length, per
  optimizer step of 16 sequences, against the measurement's (16 / micro batch) x micro-step +
  optimizer step;
- memory: `budget.memory.estimate_memory`'s larger of the train and step phases (allocated,
  before allocator headroom and CUDA context), against `torch.cuda.max_memory_allocated`.

Runs on a laptop (no torch):

    python bench/estimate_check.py bench/results/train_step-accumulated-h100-2026-11-24.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from budget.estimate import plan_memory  # noqa: E402
from budget.gpus import resolve_gpu  # noqa: E402
from budget.shape import model_shape  # noqa: E402
from budget.timing import calibration, train_seconds  # noqa: E402
from budget.tokens import Workload  # noqa: E402
from dream_job.spec import load_spec  # noqa: E402

GPU_NAMES = {"NVIDIA H100 80GB HBM3": "H100"}
SEQUENCES_PER_STEP = 16


def compare(line: dict[str, Any], gpu: str) -> dict[str, Any]:
    """Return the predicted and measured step seconds and peak GiB of one measurement line."""
    length, micro_batch, method = line["length"], line["micro_batch"], line["method"]
    spec = load_spec(REPO / "jobs" / "dream-s1k.yaml", [
        f"train.method={method}", f"data.max_length={length}", f"train.micro_batch_size={micro_batch}",
        f"train.global_batch_size={SEQUENCES_PER_STEP}", "train.epochs=1", "train.lora.rank=64",
        "train.activation_checkpointing=true", "train.compile=false", *line["settings"]])
    shape = model_shape(spec)
    work = Workload(rows=SEQUENCES_PER_STEP, tokens_per_epoch=SEQUENCES_PER_STEP * length, mean_length=length,
                    suites=[], source="bench", is_estimate=False)
    trainable = shape.lora_params(64, list(spec.train.lora.targets)) if method == "lora" else shape.num_params
    steps, seconds, mfu, _ = train_seconds(spec, shape, work, resolve_gpu(gpu), method=method, num_gpus=1,
                                           trainable=trainable, cal=calibration())
    memory = plan_memory(spec, method, 1, data_report=None)
    predicted_gib = max(memory.phases_gib["train"], memory.phases_gib["step"])
    measured_s = SEQUENCES_PER_STEP // micro_batch * line["micro_s"] + line["optimizer_s"]
    return {
        "method": method, "length": length, "micro_batch": micro_batch, "settings": line["settings"],
        "step_s": {"predicted": seconds / steps, "measured": measured_s, "ratio": seconds / steps / measured_s},
        "peak_gib": {"predicted": predicted_gib, "measured": line["peak_gib"],
                     "ratio": predicted_gib / line["peak_gib"]},
    }


def main() -> None:
    """Print one comparison per measured project step, then the largest deviations."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    args = parser.parse_args()
    rows = []
    for path in args.results:
        gpu = None
        for text in path.read_text(encoding="utf-8").splitlines():
            line = json.loads(text)
            gpu = GPU_NAMES.get(line.get("device", ""), gpu)
            if line.get("step") != "project" or "micro_s" not in line:
                continue
            rows.append(compare(line, gpu or "H100"))
            print(json.dumps(rows[-1]), flush=True)
    worst_time = max(abs(r["step_s"]["ratio"] - 1) for r in rows)
    worst_memory = max(abs(r["peak_gib"]["ratio"] - 1) for r in rows)
    print(json.dumps({"cases": len(rows), "worst_step_time_error": worst_time, "worst_peak_memory_error": worst_memory}))


if __name__ == "__main__":
    main()
