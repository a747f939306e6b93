"""Process group and device for training: torchrun's environment, or one local process.

Training always runs inside a process group (gloo on CPU, NCCL on CUDA), also for one
process, so FSDP2 and torch.distributed.checkpoint take the same path everywhere.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from dream_job.errors import SpecError


@dataclass(frozen=True)
class Dist:
    """This process's place in the job."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_rank0(self) -> bool:
        """True on the process that writes shared files and logs."""
        return self.rank == 0


def current_rank() -> int:
    """Return this process's rank in the default process group, 0 when there is none."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_distributed(device_choice: str) -> Dist:
    """Join (or create) the process group and pick this process's device.

    Args:
        device_choice: `auto` (CUDA when present), `cpu` or `cuda` (the spec's `train.device`).

    Raises:
        SpecError: `cuda` was asked for but no GPU is visible.
    """
    use_cuda = torch.cuda.is_available() if device_choice == "auto" else device_choice == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise SpecError(
            "`train.device` is `cuda` but no CUDA GPU is visible", key="train.device", value="cuda",
            hint="run on a GPU machine, or `--set train.device=cpu` for a CPU run",
        )
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        timeout = timedelta(minutes=30)  # rank 0 alone reads the base weights before the first collective
        if "RANK" in os.environ:
            dist.init_process_group(backend, timeout=timeout, device_id=device if use_cuda else None)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return Dist(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def close_distributed(*, succeeded: bool = True) -> None:
    """Leave the process group (safe to call when none exists).

    After a successful run every rank first waits for the others (a barrier), so no rank tears its
    gloo/NCCL connections down while a peer still talks to it; then the group is destroyed and the
    objects still holding it (FSDP meshes in reference cycles) are collected now. Left to
    interpreter shutdown, the group's C++ worker threads were destroyed unjoined and the process
    died with SIGABRT ("terminate called without an active exception") after its work was done.
    A failed rank skips the barrier: its peers may never reach it.
    """
    if not dist.is_initialized():
        return
    if succeeded and dist.get_world_size() > 1:
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()
