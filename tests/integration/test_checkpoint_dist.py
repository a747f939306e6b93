"""DCP checkpoints across 2 gloo ranks with FSDP2, and resharding between 1 and 2 ranks.

The test process trains a tiny model alone and saves it (`single/`); two spawned ranks load that
into an FSDP2 model (1 → 2), train their own, save (`dist/`), perturb and load it back (2 → 2,
bit-equal), and write the gathered tensors; the test process then loads `dist/` alone (2 → 1).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from dream_job.train.checkpoint import CheckpointManager
from dream_job.train.state import DictState, ModelOptimizerState, TrainState
from tests.unit.test_checkpoint import assert_bit_equal, make_training, perturb, snapshot

WORLD_SIZE = 2


def full_snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """`snapshot` with every DTensor gathered to its full value (collective)."""
    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in snapshot(model, optimizer).items()}


def local_snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """`snapshot` of this rank's shards only."""
    return {k: v.to_local().clone() if isinstance(v, DTensor) else v for k, v in snapshot(model, optimizer).items()}


def make_fsdp_training(seed: int, num_steps: int):
    """`make_training`, but sharded with FSDP2 (each decoder layer, then the root) before the steps."""
    model, optimizer, scheduler = make_training(seed=seed, num_steps=0)
    mesh = init_device_mesh("cpu", (WORLD_SIZE,))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)  # over the DTensors
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))
    torch.manual_seed(100 + dist.get_rank())  # different data per rank: gradients are averaged
    for _ in range(num_steps):
        model(torch.randint(1, 128, (2, 8))).float().logsumexp(-1).mean().backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    return model, optimizer, scheduler


def worker(rank: int, tmp: Path, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        # 1 → 2: the single-process checkpoint into a fresh FSDP2 model and optimizer.
        model, optimizer, _ = make_fsdp_training(seed=1, num_steps=0)
        train = TrainState(data_hash="h", world_size=WORLD_SIZE)
        states = {"app": ModelOptimizerState(model, optimizer), "train": train}
        CheckpointManager(tmp / "single", keep=1).load(2, states)
        assert_bit_equal(full_snapshot(model, optimizer), torch.load(tmp / "single.pt"))
        assert train.step == 2

        # 2 → 2: save, perturb, load is bit-equal on every rank's shards.
        model, optimizer, scheduler = make_fsdp_training(seed=0, num_steps=2)
        train = TrainState(data_hash="h", step=2, world_size=WORLD_SIZE)
        states = {"app": ModelOptimizerState(model, optimizer), "scheduler": DictState(scheduler), "train": train}
        manager = CheckpointManager(tmp / "dist", keep=1)
        manager.save(2, states)
        want, want_sched = local_snapshot(model, optimizer), scheduler.state_dict()
        full = full_snapshot(model, optimizer)
        if rank == 0:
            torch.save(full, tmp / "dist.pt")
        perturb(model, optimizer)
        assert all(not torch.equal(v, want[k]) for k, v in local_snapshot(model, optimizer).items())
        scheduler.step()
        train.step = 99
        assert manager.latest_step() == 2
        manager.load(2, states)
        assert_bit_equal(local_snapshot(model, optimizer), want)
        assert scheduler.state_dict() == want_sched and train.step == 2
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fsdp2_checkpoint_reshards_between_one_and_two_ranks(tmp_path: Path) -> None:
    model, optimizer, _ = make_training(seed=0, num_steps=2)
    CheckpointManager(tmp_path / "single", keep=1).save(
        2, {"app": ModelOptimizerState(model, optimizer), "train": TrainState(data_hash="h", step=2)}
    )
    torch.save(snapshot(model, optimizer), tmp_path / "single.pt")

    mp.spawn(worker, args=(tmp_path, free_port()), nprocs=WORLD_SIZE, join=True)

    # 2 → 1: the FSDP2 checkpoint into a plain model and a fresh optimizer.
    model, optimizer, scheduler = make_training(seed=3, num_steps=0)
    train = TrainState(data_hash="h")
    states = {"app": ModelOptimizerState(model, optimizer), "scheduler": DictState(scheduler), "train": train}
    CheckpointManager(tmp_path / "dist", keep=1).load(2, states)
    assert_bit_equal(snapshot(model, optimizer), torch.load(tmp_path / "dist.pt"))
    assert (train.step, train.world_size, scheduler.last_epoch) == (2, 1, 2)
