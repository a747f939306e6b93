"""The streamed export across 2 gloo ranks with FSDP2: LoRA merge, shards, and a failure on rank 0.

Two spawned ranks shard the same LoRA model (bf16 frozen base, fp32 adapters, as the trainer holds
it) and export it with small shards; the test process exports the unsharded model alone and
compares: the folders' weights are bit-equal, and both equal peft's own merge rounded to bf16.
Then rank 0's third shard fails while it is written: rank 0 re-raises its error, rank 1 gets a
`CheckpointError`, neither hangs, and no folder is left behind.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from peft import LoraConfig, get_peft_model
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import dream_job.train.export_weights as export_weights
from dream_job.errors import CheckpointError
from dream_job.train.export import export_hf, load_export
from tests.conftest import TINY_DREAM
from tests.integration.test_checkpoint_dist import free_port
from tests.unit.test_export import TINY, make_model

WORLD_SIZE = 2
SHARD_LIMIT = 6_000  # bytes: the tiny model (53,824 bytes in bf16) spans a dozen shards
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_lora_model() -> torch.nn.Module:
    """The same model in every process: bf16 base, fp32 non-zero adapters on every linear."""
    torch.manual_seed(11)
    model = get_peft_model(make_model().to(torch.bfloat16),
                           LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
        if "lora_" in name:
            p.data = p.data.float()
    return model


def read_weights(out: Path) -> dict[str, torch.Tensor]:
    return dict(load_export(out)[0].state_dict())


def worker(rank: int, tmp: Path, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    export_weights.MAX_SHARD_BYTES = SHARD_LIMIT  # this spawned process's own module
    try:
        model = make_lora_model()
        mesh = init_device_mesh("cpu", (WORLD_SIZE,))
        for layer in model.base_model.model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        assert all(isinstance(p, DTensor) for p in model.parameters())
        export_hf(model, TINY, out_dir=tmp / "dist", tokenizer_dir=TINY_DREAM, base_dir=None, is_lora=True)

        # Rank 0's third shard fails as its tensors are written (say, the disk filled up).
        real_writer = export_weights.ShardWriter

        class FailingWriter(real_writer):
            def write(self, key, tensor):
                if self.path.name.startswith("model-00003-"):
                    raise OSError(28, "No space left on device")
                super().write(key, tensor)

        export_weights.ShardWriter = FailingWriter
        expected = (OSError, "No space left") if rank == 0 else (CheckpointError, "rank 0 failed to write")
        with pytest.raises(expected[0], match=expected[1]):
            export_hf(model, TINY, out_dir=tmp / "failed", tokenizer_dir=TINY_DREAM, base_dir=None, is_lora=True)
        export_weights.ShardWriter = real_writer
        if rank == 0:
            assert not (tmp / "failed").exists() and not (tmp / ".failed.partial").exists()
        dist.barrier()  # both ranks are still in step after the failure
    finally:
        dist.destroy_process_group()


def test_fsdp2_lora_export_equals_the_single_process_export_and_peft_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    mp.spawn(worker, args=(tmp_path, free_port()), nprocs=WORLD_SIZE, join=True)
    assert not (tmp_path / "failed").exists() and not (tmp_path / ".failed.partial").exists()

    monkeypatch.setattr(export_weights, "MAX_SHARD_BYTES", SHARD_LIMIT)
    model = make_lora_model()
    single = export_hf(model, TINY, out_dir=tmp_path / "single", tokenizer_dir=TINY_DREAM, base_dir=None,
                       is_lora=True)
    dist_files = sorted(p.name for p in (tmp_path / "dist").glob("model-*.safetensors"))
    assert len(dist_files) >= 9
    assert dist_files == sorted(p.name for p in single.glob("model-*.safetensors"))
    for name in ("model.safetensors.index.json", "config.json", "adapter/adapter_model.safetensors"):
        assert (tmp_path / "dist" / name).read_bytes() == (single / name).read_bytes(), name
    from_dist, from_single = read_weights(tmp_path / "dist"), read_weights(single)
    merged = copy.deepcopy(model).merge_and_unload().state_dict()
    assert from_dist.keys() == from_single.keys() == merged.keys()
    for key, tensor in merged.items():
        assert torch.equal(from_dist[key], from_single[key]), key
        assert torch.equal(from_dist[key], tensor.to(torch.bfloat16)), key
