"""Stream a model's weights into bf16 safetensors shards, one gathered tensor at a time.

Input: the model's state dict (plain, or FSDP2 DTensor shards), its LoRA layers and `DreamConfig`.
Output: `model-*.safetensors` + `model.safetensors.index.json` + `config.json` in a folder, written
by rank 0 (`write_weights`). The plan (`plan_weights`) is made from names and shapes alone, the
same on every rank; then every rank gathers the tensors in that order (collective under FSDP2)
and rank 0 folds each one's LoRA delta in (fp32), casts it to bf16 and appends it to the shard
being written (`model.weights.ShardWriter`: header first). Rank 0 never holds more than one
tensor, its merge's working copies and the fp32 adapters.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from dream_job.errors import CheckpointError
from dream_job.model.dream import DreamConfig, DreamModel
from dream_job.model.weights import MAX_SHARD_BYTES, ShardWriter, plan_shards, shard_name, write_index_and_config
from dream_job.train.export_lora import PEFT_PREFIX, LoraLayerInfo, LoraMerge, is_adapter_key, peft_delta_weight

EXPORT_DTYPE = torch.bfloat16
# Segments that wrappers insert into parameter names (torch.compile, activation checkpointing).
_WRAPPER_SEGMENTS = ("_orig_mod.", "_checkpoint_wrapped_module.")


@dataclass(frozen=True)
class WeightPlan:
    """What the export writes, decided from names and shapes alone (the same on every rank).

    Attributes:
        sources: Exported (Dream) key -> key in the model's state dict, in state-dict order.
        merges: Exported key -> the LoRA delta folded into it.
        adapter_keys: State-dict keys of the LoRA tensors (they go to `adapter/`).
        shards: Exported keys of each safetensors shard, in order.
        total_bytes: Bytes of all exported tensors (the index's `metadata.total_size`).
    """

    sources: dict[str, str]
    merges: dict[str, LoraMerge]
    adapter_keys: list[str]
    shards: list[list[str]]
    total_bytes: int


def _plain_key(key: str) -> str:
    """Turn a peft/wrapper parameter name into Dream's checkpoint key."""
    key = key.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
    for segment in _WRAPPER_SEGMENTS:
        key = key.replace(segment, "")
    return key


def plan_weights(state: dict[str, Tensor], lora_layers: dict[str, LoraLayerInfo], config: DreamConfig) -> WeightPlan:
    """Map the exported keys to their sources and LoRA deltas and cut them into shards (no tensor is read).

    Raises:
        CheckpointError: The (merged) weights' keys or shapes differ from `config`'s model.
    """
    sources = {_plain_key(key): key for key in state if not is_adapter_key(key)}
    _check_against_config({key: tuple(state[source].shape) for key, source in sources.items()}, config)
    merges: dict[str, LoraMerge] = {}
    for name, (adapter, scaling, fan_in_fan_out) in lora_layers.items():
        merges[_plain_key(f"{name}.base_layer.weight")] = LoraMerge(
            f"{name}.lora_B.{adapter}.weight", f"{name}.lora_A.{adapter}.weight", adapter, scaling, fan_in_fan_out)
    sizes = {key: state[source].numel() * _export_dtype(state[source]).itemsize for key, source in sources.items()}
    return WeightPlan(
        sources=sources, merges=merges, adapter_keys=[key for key in state if is_adapter_key(key)],
        shards=plan_shards(sizes, MAX_SHARD_BYTES), total_bytes=sum(sizes.values()),
    )


def _export_dtype(tensor: Tensor) -> torch.dtype:
    return EXPORT_DTYPE if tensor.is_floating_point() else tensor.dtype


def full_value(tensor: Tensor) -> Tensor:
    """Return the whole tensor where it lives; for an FSDP2 DTensor an all-gather (collective)."""
    from torch.distributed.tensor import DTensor

    tensor = tensor.detach()
    if isinstance(tensor, DTensor):
        if tensor.device.type != tensor.device_mesh.device_type:
            tensor = tensor.to(tensor.device_mesh.device_type)  # CPU-offloaded shards gather on the mesh's device
        tensor = tensor.full_tensor()
    return tensor


def to_host(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """Return a new CPU tensor holding `tensor` in `dtype`.

    The cast runs where the tensor lives (a GPU holds the fp32 -> bf16 temporary, not the host).
    Always a copy, also of a CPU tensor: the export never hands out the model's own storage, and
    rank 0's host memory is the same whether the model sits on a GPU or on the CPU.
    """
    cast = tensor.to(dtype)
    return cast.to("cpu", copy=cast is tensor)


def _export_tensor(full: Tensor, merge: LoraMerge | None, adapters: dict[str, Tensor]) -> Tensor:
    """Rank 0: the bf16 CPU tensor to store for one key, its LoRA delta folded in.

    The merge is peft's own: `LoraLayer.get_delta_weight` (scaling * B @ A, transposed for
    fan_in_fan_out) on a CPU stand-in of the layer holding the fp32 adapters, then W + delta with
    W upcast exactly, rounded once to bf16 (what `merge`'s `weight += delta` does on a bf16 base).
    """
    if merge is None:
        return to_host(full, _export_dtype(full)).contiguous()
    delta = peft_delta_weight(adapters[merge.a_key], adapters[merge.b_key], merge)
    delta.add_(to_host(full, full.dtype))  # IEEE addition commutes: delta + W == W + delta bitwise
    return delta.to(EXPORT_DTYPE).contiguous()


def rank0_succeeded(error: BaseException | None) -> bool:
    """Every rank: whether rank 0 has had no error so far (broadcast from rank 0 under torch.distributed)."""
    ok = [error is None]
    if dist.is_initialized():
        dist.broadcast_object_list(ok, src=0)
    return bool(ok[0])


def write_weights(
    state: dict[str, Tensor], plan: WeightPlan, adapters: dict[str, Tensor], config: DreamConfig,
    folder: Path, is_rank0: bool,
) -> BaseException | None:
    """Every rank: stream the weights into `folder` (made afresh by rank 0), one tensor at a time.

    All ranks gather the tensors in the plan's order; rank 0 appends each, as a bf16 CPU tensor,
    to the shard file being written (`ShardWriter`: header first, then each tensor's bytes) and
    drops it, and fsyncs each shard when it is complete. After each shard every rank learns
    whether rank 0 is still fine, so a failure stops all ranks at the same shard.

    Returns:
        Rank 0's exception, or None (always None on the other ranks).
    """
    error: BaseException | None = None
    weight_map: dict[str, str] = {}
    if is_rank0:
        shutil.rmtree(folder, ignore_errors=True)  # a crashed earlier attempt: start over
        try:
            folder.mkdir(parents=True)
        except BaseException as exc:
            error = exc
    for number, keys in enumerate(plan.shards, start=1):
        name = shard_name(number, len(plan.shards))
        writer: ShardWriter | None = None
        if is_rank0 and error is None:
            layout = {key: (_export_dtype(state[plan.sources[key]]), tuple(state[plan.sources[key]].shape))
                      for key in keys}
            try:
                writer = ShardWriter(folder / name, layout, metadata={"format": "pt"})  # transformers checks `pt`
            except BaseException as exc:
                error = exc
        for key in keys:
            full = full_value(state[plan.sources[key]])  # collective under FSDP2: every rank, same order
            if writer is not None and error is None:
                try:
                    writer.write(key, _export_tensor(full, plan.merges.get(key), adapters))
                except BaseException as exc:  # keep gathering with the others until the shard ends
                    error = exc
            del full
        if writer is not None:
            try:
                writer.close()  # fsyncs; raises when a tensor is missing (after an error above)
                weight_map.update(dict.fromkeys(keys, name))
            except BaseException as exc:
                error = error or exc
        if not rank0_succeeded(error):
            return error
    if is_rank0:
        try:
            write_index_and_config(folder, weight_map, plan.total_bytes, config, EXPORT_DTYPE)
        except BaseException as exc:
            error = exc
    return error


def _check_against_config(shapes: dict[str, tuple[int, ...]], config: DreamConfig) -> None:
    """Refuse weights (exported key -> shape) whose keys or shapes differ from `config`'s model.

    The official loader only warns about missing tensors and fills them with random values
    (dream.md §18), so an incomplete export must never be written.
    """
    with torch.device("meta"):
        expected = {key: tuple(t.shape) for key, t in DreamModel(config).state_dict().items()}
    problems = [f"missing `{k}`" for k in sorted(expected.keys() - shapes.keys())]
    problems += [f"unexpected `{k}`" for k in sorted(shapes.keys() - expected.keys())]
    problems += [
        f"`{k}`: shape {list(shapes[k])}, config says {list(expected[k])}"
        for k in sorted(expected.keys() & shapes.keys())
        if shapes[k] != expected[k]
    ]
    if problems:
        raise CheckpointError(
            f"the model's weights do not match its config: {len(problems)} problem(s)",
            caused_by=problems,
            hint="export the model built from this config; pass `is_lora=True` for peft models",
        )
