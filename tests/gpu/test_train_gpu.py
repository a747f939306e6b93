"""Training on CUDA (skipped without a GPU): every method runs the real path in bf16, NCCL for one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.integration.test_train import SMOKE, losses, run_args, run_ok

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("prepared")
    run_ok("prep", str(SMOKE), *run_args(run_dir))
    return run_dir / "data"


@pytest.mark.parametrize("method", ["full", "full_8bit", "full_offload", "lora"])
def test_every_method_trains_in_bf16_on_cuda(tmp_path: Path, prepared: Path, method: str) -> None:
    import shutil

    run_dir = tmp_path / method
    shutil.copytree(prepared, run_dir / "data")
    extra = ["--set", "train.device=cuda", "--set", "model.dtype=bfloat16", "--set", f"train.method={method}",
             "--set", "train.epochs=2"]
    if method == "lora":
        extra += ["--set", "train.lora.rank=8", "--set", "train.lora.alpha=16", "--set", "train.learning_rate=1e-2"]
    run_ok("train", str(SMOKE), *run_args(run_dir, *extra))
    per_step = losses(run_dir)
    steps = sorted(per_step)
    first = sum(per_step[s] for s in steps[:10]) / 10
    last = sum(per_step[s] for s in steps[-10:]) / 10
    assert last < first, (method, first, last)
    rows = [json.loads(line) for line in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["mem/peak_gib"] > 0 for r in rows)
    assert (run_dir / "export" / "model.safetensors.index.json").exists()


def test_full_8bit_compiled_one_gpu_kill_and_resume(tmp_path: Path, prepared: Path) -> None:
    """The one-GPU plain module with compiled layers, partial checkpointing and torchao states resumes."""
    import shutil
    import subprocess

    from tests.integration.test_train import dream_job, kill_tree, wait_for

    common = ["--set", "train.device=cuda", "--set", "model.dtype=bfloat16", "--set", "train.method=full_8bit",
              "--set", "train.compile=true", "--set", "train.activation_checkpointing=1",
              "--set", "train.max_steps=30", "--set", "train.save_every_steps=5", "--set", "train.keep_checkpoints=10"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for run_dir in (straight, resumed):
        shutil.copytree(prepared, run_dir / "data")
    run_ok("train", str(SMOKE), *run_args(straight, *common))
    process = dream_job("train", str(SMOKE), *run_args(resumed, *common), stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    wait_for(resumed / "checkpoints" / "step-000010" / "COMPLETE", process)
    kill_tree(process.pid)
    process.wait()
    assert not (resumed / "checkpoints" / "step-000030").exists()
    run_ok("train", str(SMOKE), *run_args(resumed, *common))
    expected, got = losses(straight), losses(resumed)
    assert sorted(got) == list(range(1, 31))
    # Same batches and noise; CUDA kernels are not bit-deterministic, so close rather than equal.
    for step in range(1, 31):
        assert got[step] == pytest.approx(expected[step], rel=2e-2, abs=1e-3), step
