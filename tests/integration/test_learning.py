"""Learning checks on CPU.

The smoke job (`make smoke`'s `jobs/smoke.yaml`) fine-tunes its committed pre-trained base on
the one-digit sums with a carry, and its own evaluation shows the fine-tuned model far above
the base on the held-out questions: at least 35 of 40 on any x86-64 CPU. That is a user's claim,
so it holds by margin, not by pinning: the job trains long enough that every kernel path and
thread count measured gets 40 of 40 (bench/RESULTS.md, "Smoke job across kernel paths").

A small Dream-architecture model trained from scratch with dream-job's prep, trainer and sampler
learns 2-digit addition with a written trace (`bench/learning.py` at CPU size; the GPU size
targets >= 95 % exact match on 3 digits, see bench/RESULTS.md). These runs pin their numerics
instead: CPU training is deterministic on one kernel path, not across paths (ATen's AVX2 or
AVX512 kernels, MKL's and oneDNN's CPU dispatch, the thread count), and a from-scratch model
of this size sits near its learning threshold (6 of 200 on an AVX512 EPYC where an AVX2 machine
got more than 10). So `bench/learning.py` runs as a subprocess on one path on every machine:
`PINNED_NUMERICS`.

The held-out (a, b) pairs never occur in training (`generate_compact_rows` draws distinct
pairs), so exact match measures the learned rule. Chance is ~0: the untrained model, decoded
the same way, gets none right.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

# One CPU kernel path on any x86-64 machine with AVX2: ATen's AVX2 kernels, MKL's AVX2 code path
# in strict conditional-numerical-reproducibility mode (the same results on Intel and AMD),
# oneDNN capped at AVX2, and one thread (reductions split by the thread count; on a shared
# machine two spinning threads of a model this small also run slower than one).
PINNED_NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT", "ONEDNN_MAX_CPU_ISA": "AVX2",
                   "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Held-out sums of 200 the from-scratch model must get right under `PINNED_NUMERICS`.
MINIMUM_CORRECT = 10


def learning_check(out: Path, **options: Any) -> dict[str, Any]:
    """Run `bench/learning.py` on CPU with `PINNED_NUMERICS`, decoding with the fast then the reference sampler."""
    command = [sys.executable, str(REPO / "bench" / "learning.py"), "--out", str(out), "--device", "cpu",
               "--num-proc", "1", "--untrained", "--only", "fast", "reference-entropy", "--report",
               str(out / "report.json")]
    for name, value in options.items():
        command += [f"--{name.replace('_', '-')}", str(value)]
    env = {**os.environ, **PINNED_NUMERICS}
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    report = json.loads((out / "report.json").read_text())
    print(json.dumps(report))
    return report


def _items(out: Path, label: str) -> list[dict[str, Any]]:
    path = out / "run" / "eval" / f"items-{label}-s1k_holdout.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.timeout(1200)  # 6.6 minutes on the 2 cores shared by six agents (2026-12-07)
def test_short_training_learns_the_trace_layout_and_the_sampler_decodes_it(tmp_path: Path) -> None:
    """~150 steps (about 40 s): the decoded held-out outputs follow the trained layout."""
    report = learning_check(tmp_path, rows=2500, max_digits=2, hidden=128, layers=4, heads=4, epochs=2, batch=32,
                            lr=1e-3, holdout=64, gen_length=32)
    assert report["steps"] == 152 and report["final_loss"] < 0.5
    untrained, trained = _items(tmp_path, "base"), _items(tmp_path, "fast")
    layout = "<|im_start|>answer\nAnswer: "
    assert sum(layout in item["output"] for item in untrained) == 0
    assert sum(layout in item["output"] for item in trained) >= 0.75 * len(trained)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # 6 minutes alone on 2 cores; over 30 on the 2 cores shared by six agents (2026-12-07)
def test_training_from_scratch_adds_unseen_numbers(tmp_path: Path) -> None:
    """1,500 steps (about 6 minutes on 2 CPU cores): held-out exact match far above chance."""
    report = learning_check(tmp_path, rows=5000, max_digits=2, hidden=128, layers=4, heads=4, epochs=10, batch=32,
                            lr=1e-3, holdout=200, gen_length=32)
    settings = report["settings"]
    assert settings["untrained-fast"]["correct"] == 0, settings
    for name in ("fast", "reference-entropy"):
        assert settings[name]["correct"] >= MINIMUM_CORRECT, (name, settings)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # about 2.5 minutes alone on 2 cores; a shared machine can take several times that
def test_smoke_job_fine_tuned_model_beats_its_base(tmp_path: Path) -> None:
    """`dream-job run jobs/smoke.yaml` end to end, on this machine's own kernels: fine-tuned >= 35 of 40."""
    run_dir, published = tmp_path / "run", tmp_path / "published"
    subprocess.run([sys.executable, "-m", "dream_job", "run", "jobs/smoke.yaml",
                    "--set", f"artifacts.run_dir={run_dir}", "--set", f"artifacts.destinations=[file://{published}]"],
                   cwd=REPO, check=True)
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    base, final = summary["base"]["s1k_holdout"], summary["final"]["s1k_holdout"]
    print(json.dumps({"base": base["correct"], "final": final["correct"], "n": final["n"]}))
    assert base["n"] == final["n"] == 40
    # By margin: 40 of 40 measured across kernel paths and thread counts (module docstring).
    assert final["correct"] >= 35 and base["correct"] <= 5, (base["correct"], final["correct"])
    # The held-out questions are one-digit sums with a carry, which the base never saw.
    items = [json.loads(line) for line in (run_dir / "eval" / final["items"]).read_text().splitlines()]
    assert all(int(item["gold"]) >= 10 for item in items)
    assert (published / "model.safetensors.index.json").is_file()
