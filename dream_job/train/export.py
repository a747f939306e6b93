"""Export a trained Dream model as a Hugging Face folder the official remote code loads.

Input: the training model (a plain `DreamModel`, FSDP2-sharded, or carrying peft LoRA layers),
its `DreamConfig`, the run's tokenizer folder and the base-model snapshot. Output (`<run>/export/`,
dream.md §18): bf16 safetensors shards + index + `config.json`, `generation_config.json`, the
tokenizer the job trained with, Dream's remote-code `.py` files (copied from the base snapshot;
they are never in this repo), `adapter/` for LoRA runs and `dream_job_export.json` describing the
export. `load_export` reads an export back with dream-job's own loader.

The weights stream out one tensor at a time. Every rank gathers the tensors one by one
(collective under FSDP2); rank 0 copies each to the CPU, folds its LoRA delta in (fp32), casts it
to bf16 and appends it to the safetensors shard being written (`weights.ShardWriter` writes the
header first). Rank 0's host memory is one bf16 tensor + the fp32 adapters + one merge's working
copies, never a whole shard or the whole model: at Dream 7B the whole-model fp32 merge this
replaces needed ~47 GiB of host RAM, filling whole 5 GiB shards ~5.6 GiB
(`budget/memory.py: export_host_bytes`; measured by `bench/export_rss.py` and `bench/host_memory.py`).
"""

from __future__ import annotations

import copy
import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import Tensor, nn

from dream_job.errors import CheckpointError
from dream_job.rundir import EXPORT_INFO_NAME, fsync_path, set_file_modes, write_json_atomically
from dream_job.model.dream import DreamConfig, DreamModel
from dream_job.model.weights import (
    MAX_SHARD_BYTES,
    ShardWriter,
    load_safetensors_weights,
    plan_shards,
    shard_name,
    write_index_and_config,
)
from dream_job.model.tokenizer_files import tokenizer_sources, write_tokenizer_files

logger = logging.getLogger(__name__)

REMOTE_CODE_FILES = ("configuration_dream.py", "modeling_dream.py", "generation_utils.py", "tokenization_dream.py")
GENERATION_CONFIG_NAME = "generation_config.json"
ADAPTER_DIR_NAME = "adapter"
EXPORT_DTYPE = torch.bfloat16
_PEFT_PREFIX = "base_model.model."
# Segments that wrappers insert into parameter names (torch.compile, activation checkpointing).
_WRAPPER_SEGMENTS = ("_orig_mod.", "_checkpoint_wrapped_module.")
# One LoRA layer: (adapter name, scaling, fan_in_fan_out), read from the peft module.
_LoraLayer = tuple[str, float, bool]


@dataclass(frozen=True)
class _Merge:
    """One LoRA delta to fold into a weight: peft's `get_delta_weight` of these adapter tensors."""

    b_key: str
    a_key: str
    adapter: str
    scaling: float
    fan_in_fan_out: bool = False


@dataclass(frozen=True)
class _WeightPlan:
    """What the export writes, decided from names and shapes alone (the same on every rank).

    Attributes:
        sources: Exported (Dream) key -> key in the model's state dict, in state-dict order.
        merges: Exported key -> the LoRA delta folded into it.
        adapter_keys: State-dict keys of the LoRA tensors (they go to `adapter/`).
        shards: Exported keys of each safetensors shard, in order.
        total_bytes: Bytes of all exported tensors (the index's `metadata.total_size`).
    """

    sources: dict[str, str]
    merges: dict[str, _Merge]
    adapter_keys: list[str]
    shards: list[list[str]]
    total_bytes: int


def dream_generation_config(config: DreamConfig) -> dict[str, Any]:
    """Return Dream's published `generation_config.json` with this model's token ids (dream.md §18)."""
    eos = config.eos_token_id
    return {
        "_from_model_config": True, "alg": "origin", "alg_temp": None, "bos_token_id": eos, "eos_token_id": eos,
        "eps": 0.001, "mask_token_id": None, "output_history": False, "pad_token_id": eos, "steps": 512,
        "temperature": 0.0, "top_k": None, "top_p": None, "transformers_version": "4.46.2",
    }


def export_hf(
    model: nn.Module,
    config: DreamConfig,
    *,
    out_dir: Path,
    tokenizer_dir: Path,
    base_dir: Path | None,
    is_lora: bool = False,
    base_tokenizer: bool = False,
) -> Path:
    """Write `model` as an HF folder loadable with `AutoModel.from_pretrained(..., trust_remote_code=True)`.

    Collective under FSDP2: every rank must call it. The tensors are gathered one at a time and
    only rank 0 writes; after each shard all ranks learn whether rank 0 is still fine, and at the
    end whether it succeeded. Rank 0 builds the whole folder in the hidden sibling
    `.<out_dir name>.partial` and renames it to `out_dir` at the end, so `out_dir` appears only
    complete; an exception removes the partial folder, a killed process leaves it and the next call
    deletes it and starts over. Writes, inside `out_dir`:

    - `model-*.safetensors` (bf16, <= 5 GiB each) + `model.safetensors.index.json` + `config.json`;
    - `generation_config.json`, copied from `base_dir` or Dream's published values, as plain JSON
      (transformers' `GenerationConfig.save_pretrained` breaks on Dream's class, dream.md §16);
    - the tokenizer the job trained with (see `base_tokenizer`); the remote-code `.py` files from
      `base_dir` (a warning when it lacks them: the folder then loads with `load_export` but not
      with `trust_remote_code`);
    - for LoRA: `adapter/adapter_model.safetensors` + `adapter/adapter_config.json`, while the
      top-level weights are merged: bf16(W + delta) with peft's own `LoraLayer.get_delta_weight`
      (scaling * B @ A), computed in fp32 on the CPU one tensor at a time (bit-equal to peft's
      `merge_and_unload` of the same weights then rounded to bf16); the training model is never
      modified;
    - `dream_job_export.json`: dtype, parameter count, LoRA flag, file list.

    Host memory on rank 0: one bf16 tensor being written, the adapters in fp32, and while a LoRA
    weight is merged its CPU copy plus fp32 buffers of its size. Device memory:
    one gathered tensor at a time.

    Args:
        model: `DreamModel`, possibly FSDP2-sharded, or a peft model (`PeftModel` or LoRA layers
            injected into a `DreamModel`) when `is_lora`.
        config: The architecture of the (merged) weights.
        out_dir: Destination; must not exist or be empty.
        tokenizer_dir: The tokenizer the job trained with, as prep saved it (`<run>/data/tokenizer/`).
        base_dir: Local snapshot of the base model (source of remote code, generation config and,
            with `base_tokenizer`, the tokenizer files); None for tiny smoke models.
        is_lora: The model carries peft LoRA layers; export the adapter and merged weights.
        base_tokenizer: The job trained with the base model's own tokenizer (`model.tokenizer`
            unset or equal to `model.base`): ship Dream's published tokenizer files from
            `base_dir` (same tokenizer, in the layout the official remote code expects) when it
            has all of them. Otherwise the files of `tokenizer_dir` are shipped, with a
            `tokenizer_config.json` that transformers 4.46.2 reads too (`model/tokenizer_files.py`).

    Returns:
        `out_dir`.

    Raises:
        CheckpointError: `out_dir` is not empty, the weights do not match `config`'s keys and
            shapes, or rank 0 failed (on the other ranks).
        DataError: There is no tokenizer to ship.
        ValueError: `is_lora` disagrees with the model, or a LoRA kind that cannot be merged here.
    """
    out_dir, base_dir = Path(out_dir), None if base_dir is None else Path(base_dir)
    # Checks on every rank before the first collective, so a bad call fails fast everywhere.
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CheckpointError(
            f"export folder `{out_dir}` already exists and is not empty",
            hint=f"remove it to export again: `rm -r {out_dir}`",
        )
    tokenizer_files = tokenizer_sources(Path(tokenizer_dir), base_dir, base_tokenizer=base_tokenizer)
    lora_layers = _find_lora_layers(model)
    if is_lora != bool(lora_layers):
        raise ValueError(f"`is_lora={is_lora}` but the model has {len(lora_layers)} LoRA layer(s)")
    state = model.state_dict()  # under FSDP2 this rank's shards (DTensors): nothing is gathered yet
    plan = _plan_weights(state, lora_layers, config)  # identical on every rank: a mismatch fails on all
    is_rank0 = not dist.is_initialized() or dist.get_rank() == 0
    adapters: dict[str, Tensor] = {}
    for key in plan.adapter_keys:  # small (rank x (in + out) per layer): kept for the merges and adapter/
        full = _full_value(state[key])  # collective under FSDP2
        if is_rank0:
            adapters[key] = _to_host(full, full.dtype)
    partial = _partial_dir(out_dir)
    error = _write_weights(state, plan, adapters, config, partial, is_rank0)
    del state
    if is_rank0 and error is None:
        try:
            _finish_export(model, adapters, config, lora_layers, out_dir, tokenizer_files, base_dir)
        except BaseException as exc:  # reported to the other ranks below, then re-raised
            error = exc
    if is_rank0 and error is not None:
        shutil.rmtree(partial, ignore_errors=True)
    # Doubles as the final barrier; without it the other ranks would run on, or hang in the next
    # collective, when rank 0 failed.
    if not _rank0_succeeded(error) and error is None:
        raise CheckpointError(f"rank 0 failed to write the export `{out_dir}`", hint="see rank 0's log")
    if error is not None:
        raise error
    return out_dir


def load_export(
    out_dir: Path, *, dtype: torch.dtype | None = None, device: str = "cpu"
) -> tuple[DreamModel, DreamConfig]:
    """Read an export (or any Dream HF folder) with dream-job's loader: meta init, then the weights.

    Args:
        out_dir: Folder written by `export_hf`.
        dtype: Cast the weights to this dtype; None keeps the stored bf16.
        device: Where the weights are loaded.

    Returns:
        The model (eval mode) and its config.

    Raises:
        WeightsMismatchError: The weights do not match the folder's `config.json`.
    """
    config = DreamConfig.from_pretrained_dir(out_dir)
    with torch.device("meta"):
        model = DreamModel(config)
    load_safetensors_weights(model, out_dir, dtype=dtype, device=device)
    return model.eval(), config


def _find_lora_layers(model: nn.Module) -> dict[str, _LoraLayer]:
    """Map each peft LoRA module's name to (adapter, scaling, fan_in_fan_out, lora_bias).

    Scaling is read from the layer (alpha/r, rsLoRA, rank patterns already applied there).
    """
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora import Linear as LoraLinear

    layers: dict[str, _LoraLayer] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if not isinstance(module, LoraLinear) or module.lora_variant or module.merged_adapters:
            raise ValueError(f"cannot merge `{name}`: only plain LoRA on `nn.Linear`, not yet merged, is supported")
        if len(module.active_adapters) != 1:
            raise ValueError(f"`{name}` has active adapters {module.active_adapters}; export exactly one")
        adapter = module.active_adapters[0]
        if module.lora_bias[adapter]:  # the trainer never asks for it (train/build.py)
            raise ValueError(f"cannot merge `{name}`: LoRA with `lora_bias` is not supported")
        layers[name] = (adapter, float(module.scaling[adapter]), bool(getattr(module, "fan_in_fan_out", False)))
    if len({adapter for adapter, *_ in layers.values()}) > 1:
        raise ValueError("the model has more than one active LoRA adapter; export one at a time")
    return layers


def _is_adapter_key(key: str) -> bool:
    return any(part.startswith("lora_") for part in key.split("."))


def _plain_key(key: str) -> str:
    """Turn a peft/wrapper parameter name into Dream's checkpoint key."""
    key = key.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")
    for segment in _WRAPPER_SEGMENTS:
        key = key.replace(segment, "")
    return key


def _plan_weights(state: dict[str, Tensor], lora_layers: dict[str, _LoraLayer], config: DreamConfig) -> _WeightPlan:
    """Map the exported keys to their sources and LoRA deltas and cut them into shards (no tensor is read).

    Raises:
        CheckpointError: The (merged) weights' keys or shapes differ from `config`'s model.
    """
    sources = {_plain_key(key): key for key in state if not _is_adapter_key(key)}
    _check_against_config({key: tuple(state[source].shape) for key, source in sources.items()}, config)
    merges: dict[str, _Merge] = {}
    for name, (adapter, scaling, fan_in_fan_out) in lora_layers.items():
        merges[_plain_key(f"{name}.base_layer.weight")] = _Merge(
            f"{name}.lora_B.{adapter}.weight", f"{name}.lora_A.{adapter}.weight", adapter, scaling, fan_in_fan_out)
    sizes = {key: state[source].numel() * _export_dtype(state[source]).itemsize for key, source in sources.items()}
    return _WeightPlan(
        sources=sources, merges=merges, adapter_keys=[key for key in state if _is_adapter_key(key)],
        shards=plan_shards(sizes, MAX_SHARD_BYTES), total_bytes=sum(sizes.values()),
    )


def _export_dtype(tensor: Tensor) -> torch.dtype:
    return EXPORT_DTYPE if tensor.is_floating_point() else tensor.dtype


def _full_value(tensor: Tensor) -> Tensor:
    """Return the whole tensor where it lives; for an FSDP2 DTensor an all-gather (collective)."""
    from torch.distributed.tensor import DTensor

    tensor = tensor.detach()
    if isinstance(tensor, DTensor):
        if tensor.device.type != tensor.device_mesh.device_type:
            tensor = tensor.to(tensor.device_mesh.device_type)  # CPU-offloaded shards gather on the mesh's device
        tensor = tensor.full_tensor()
    return tensor


def _to_host(tensor: Tensor, dtype: torch.dtype) -> Tensor:
    """Return a new CPU tensor holding `tensor` in `dtype`.

    The cast runs where the tensor lives (a GPU holds the fp32 -> bf16 temporary, not the host).
    Always a copy, also of a CPU tensor: the export never hands out the model's own storage, and
    rank 0's host memory is the same whether the model sits on a GPU or on the CPU.
    """
    cast = tensor.to(dtype)
    return cast.to("cpu", copy=cast is tensor)


def _export_tensor(full: Tensor, merge: _Merge | None, adapters: dict[str, Tensor]) -> Tensor:
    """Rank 0: the bf16 CPU tensor to store for one key, its LoRA delta folded in.

    The merge is peft's own: `LoraLayer.get_delta_weight` (scaling * B @ A, transposed for
    fan_in_fan_out) on a CPU stand-in of the layer holding the fp32 adapters, then W + delta with
    W upcast exactly, rounded once to bf16 (what `merge`'s `weight += delta` does on a bf16 base).
    """
    if merge is None:
        return _to_host(full, _export_dtype(full)).contiguous()
    delta = _peft_delta_weight(adapters[merge.a_key], adapters[merge.b_key], merge)
    delta.add_(_to_host(full, full.dtype))  # IEEE addition commutes: delta + W == W + delta bitwise
    return delta.to(EXPORT_DTYPE).contiguous()


def _peft_delta_weight(a: Tensor, b: Tensor, merge: _Merge) -> Tensor:
    """Return peft's `get_delta_weight` for adapters `a` (r x in) and `b` (out x r) of one layer, in fp32.

    The stand-in is a peft LoRA layer injected into a meta `nn.Linear` (no weights, no random
    draws), given the layer's own adapters and scaling. The result is a new tensor of out x in.
    """
    from peft import LoraConfig, inject_adapter_in_model

    rank, in_features = a.shape
    with torch.device("meta"):  # meta: peft's initialisation allocates nothing and draws no random numbers
        holder = nn.ModuleDict({"linear": nn.Linear(in_features, b.shape[0], bias=False)})
        holder = inject_adapter_in_model(
            LoraConfig(r=rank, lora_alpha=rank, target_modules=["linear"], init_lora_weights=False),
            holder, adapter_name=merge.adapter)
    layer = holder["linear"]
    layer.lora_A[merge.adapter].weight = nn.Parameter(a.float(), requires_grad=False)
    layer.lora_B[merge.adapter].weight = nn.Parameter(b.float(), requires_grad=False)
    layer.scaling[merge.adapter] = merge.scaling
    layer.fan_in_fan_out = merge.fan_in_fan_out
    return layer.get_delta_weight(merge.adapter)


def _rank0_succeeded(error: BaseException | None) -> bool:
    """Every rank: whether rank 0 has had no error so far (broadcast from rank 0 under torch.distributed)."""
    ok = [error is None]
    if dist.is_initialized():
        dist.broadcast_object_list(ok, src=0)
    return bool(ok[0])


def _write_weights(
    state: dict[str, Tensor], plan: _WeightPlan, adapters: dict[str, Tensor], config: DreamConfig,
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
            full = _full_value(state[plan.sources[key]])  # collective under FSDP2: every rank, same order
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
        if not _rank0_succeeded(error):
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


def _finish_export(
    model: nn.Module, adapters: dict[str, Tensor], config: DreamConfig, lora_layers: dict[str, _LoraLayer],
    out_dir: Path, tokenizer_files: list[Path], base_dir: Path | None,
) -> None:
    """Rank 0: add everything but the weights to the partial folder, then rename it to `out_dir`."""
    partial = _partial_dir(out_dir)
    generation_config = base_dir / GENERATION_CONFIG_NAME if base_dir is not None else None
    if generation_config is not None and generation_config.is_file():
        shutil.copyfile(generation_config, partial / GENERATION_CONFIG_NAME)
    else:
        write_json_atomically(partial / GENERATION_CONFIG_NAME, dream_generation_config(config))
    write_tokenizer_files(tokenizer_files, partial)  # never replaces a file already there (our weights)
    for name in REMOTE_CODE_FILES if base_dir is not None else ():
        if (base_dir / name).is_file():
            shutil.copyfile(base_dir / name, partial / name)
    if missing := [f"`{name}`" for name in REMOTE_CODE_FILES if not (partial / name).is_file()]:
        logger.warning(
            "the export `%s` lacks Dream's remote code %s (base model folder: `%s`): it loads with dream-job's "
            "`load_export` but not with `AutoModel.from_pretrained(..., trust_remote_code=True)`",
            out_dir, ", ".join(missing), base_dir,
        )

    adapter = next(iter(lora_layers.values()))[0] if lora_layers else None
    if adapter is not None:
        _write_adapter(model, adapters, adapter, partial / ADAPTER_DIR_NAME)
    files = sorted(str(p.relative_to(partial)) for p in partial.rglob("*") if p.is_file())
    manifest = {
        "format_version": 1, "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dtype": "bfloat16", "num_parameters": config.num_parameters(), "lora": adapter is not None,
        "lora_adapter": adapter, "remote_code": not missing, "base_dir": None if base_dir is None else str(base_dir),
        "tokenizer_from": str(tokenizer_files[0].parent), "files": sorted([*files, EXPORT_INFO_NAME]),
    }
    write_json_atomically(partial / EXPORT_INFO_NAME, manifest)
    set_file_modes(partial)  # safetensors writes its files 0600
    # The shards were fsynced as they were written; syncing them again costs nothing (no dirty pages).
    for path in [*partial.rglob("*"), partial]:
        fsync_path(path)
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked by the caller); rename cannot replace a directory
    partial.rename(out_dir)
    fsync_path(out_dir.parent)  # make the rename durable
    logger.info("exported %s parameters to `%s`", f"{config.num_parameters():,}", out_dir)


def _partial_dir(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.partial")


def _write_adapter(model: nn.Module, adapters: dict[str, Tensor], adapter: str, folder: Path) -> None:
    """Write peft's `adapter_model.safetensors` + `adapter_config.json` (`PeftModel.from_pretrained` reads them).

    `adapters` holds the full LoRA tensors under the model's state-dict keys (rank 0's CPU copies).
    """
    from peft.utils import get_peft_model_state_dict

    tensors = get_peft_model_state_dict(model, state_dict=adapters, adapter_name=adapter, save_embedding_layers=False)
    # Injected layers (no PeftModel around the DreamModel) lack the prefix PeftModel expects on load.
    prefixed = {key if key.startswith(_PEFT_PREFIX) else _PEFT_PREFIX + key: t for key, t in tensors.items()}
    tensors = {key: t.detach().to("cpu").contiguous() for key, t in prefixed.items()}
    folder.mkdir()
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    peft_config = copy.deepcopy(model.peft_config[adapter])
    peft_config.inference_mode = True  # as `PeftModel.save_pretrained` writes it
    peft_config.save_pretrained(str(folder))

