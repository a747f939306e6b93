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
