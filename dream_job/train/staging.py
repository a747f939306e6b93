"""Host copies of a training state dict for asynchronous checkpoint saves (`train.async_save`).

Job: give `torch.distributed.checkpoint.async_save` a copy of the state that training may no
longer change. Input: the state dict DCP builds from the `Stateful`s (plain tensors, FSDP2
DTensors, torchao's 8-bit optimizer states, Python values). Output: the same structure whose
tensors live in host RAM.

DCP's own `DefaultStager` cannot copy torchao's `OptimState8bit` (it calls `new_empty`, which
the subclass does not implement), so this stager unwraps every tensor subclass with its
`__tensor_flatten__` / `__tensor_unflatten__` (DTensor and `OptimState8bit` alike, nested too)
and copies only plain tensors. Each plain tensor goes into a buffer kept under its key path
and reused by every later save of the run (pinned on CUDA machines, so the GPU->host copies run
at full PCIe speed): the run holds one host copy of its checkpoint shards. Buffers are plain
host allocations page-locked with `cudaHostRegister`, as DCP's stager does: torch's pinned
allocator rounds each block up to a power of two (an embedding of 1.09 GB would take 2 GiB).
"""

from __future__ import annotations

import copy
import weakref
from typing import Any

import torch
from torch.distributed.checkpoint.staging import AsyncStager


class HostStager(AsyncStager):
    """Copy a state dict into host buffers reused across saves; synchronous (returns once copied).

    Args:
        pin_memory: Allocate the buffers in pinned memory (only where CUDA is available).
    """

    _synchronize_after_execute = False  # `stage` returns only after every copy is done

    def __init__(self, *, pin_memory: bool) -> None:
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self._buffers: dict[tuple[Any, ...], torch.Tensor] = {}

    @property
    def host_bytes(self) -> int:
        """Bytes of host RAM the buffers hold."""
        return sum(b.untyped_storage().nbytes() for b in self._buffers.values())

    def stage(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """Return a copy of `state_dict` with every tensor in host RAM (the same nesting and subclasses)."""
        staged = self._copy(state_dict, ())
        if self.pin_memory:
            torch.cuda.synchronize()  # the copies into pinned memory may still be in flight
        return staged

    def close(self) -> None:
        """Release the buffers (a save still writing keeps its own references until it is done)."""
        self._buffers.clear()

    def _copy(self, value: Any, path: tuple[Any, ...]) -> Any:
        if isinstance(value, dict):
            return {key: self._copy(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            items = [self._copy(item, (*path, index)) for index, item in enumerate(value)]
            return items if isinstance(value, list) else type(value)(items)
        if not isinstance(value, torch.Tensor):
            return copy.deepcopy(value)  # param groups and the like: the live ones change with training
        if type(value) is not torch.Tensor and hasattr(type(value), "__tensor_flatten__"):
            names, context = value.__tensor_flatten__()
            inner = {name: self._copy(getattr(value, name), (*path, name)) for name in names}
            return type(value).__tensor_unflatten__(inner, context, value.size(), value.stride())
        buffer = self._buffers.get(path)
        if buffer is None or buffer.shape != value.shape or buffer.dtype != value.dtype:
            buffer = torch.empty(value.shape, dtype=value.dtype, device="cpu")
            if self.pin_memory and buffer.numel():
                _page_lock(buffer)
            self._buffers[path] = buffer
        buffer.copy_(value.detach(), non_blocking=self.pin_memory)
        return buffer


def _page_lock(buffer: torch.Tensor) -> None:
    """Register `buffer`'s memory with CUDA (pinned) until the tensor is freed."""
    cudart = torch.cuda.cudart()
    pointer, size = buffer.data_ptr(), buffer.untyped_storage().nbytes()
    error = int(cudart.cudaHostRegister(pointer, size, 1))  # 1: cudaHostRegisterPortable
    if error:
        raise RuntimeError(f"cudaHostRegister of {size} bytes of host memory failed with CUDA error {error}")
    weakref.finalize(buffer, cudart.cudaHostUnregister, pointer)
