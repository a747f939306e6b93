"""Export a trained Dream model as a Hugging Face folder the official remote code loads.

Input: the training model (a plain `DreamModel`, FSDP2-sharded, or carrying peft LoRA layers),
its `DreamConfig`, the run's tokenizer folder and the base-model snapshot. Output (`<run>/export/`,
dream.md §18): bf16 safetensors shards + index + `config.json`, `generation_config.json`, the
tokenizer files, Dream's remote-code `.py` files (copied from the base snapshot; they are never
in this repo), `adapter/` for LoRA runs and `dream_job_export.json` describing the export.
`load_export` reads an export back with dream-job's own loader.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch import Tensor, nn

from dream_job.errors import CheckpointError, DataError
from dream_job.model.dream import DreamConfig, DreamModel
from dream_job.model.weights import fsync_path, load_safetensors_weights, save_hf_folder

logger = logging.getLogger(__name__)

REMOTE_CODE_FILES = ("configuration_dream.py", "modeling_dream.py", "generation_utils.py", "tokenization_dream.py")
DREAM_TOKENIZER_FILES = (
    "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json",
    "tokenization_dream.py",
)
GENERATION_CONFIG_NAME = "generation_config.json"
MANIFEST_NAME = "dream_job_export.json"
ADAPTER_DIR_NAME = "adapter"
_PEFT_PREFIX = "base_model.model."
# Segments that wrappers insert into parameter names (torch.compile, activation checkpointing).
_WRAPPER_SEGMENTS = ("_orig_mod.", "_checkpoint_wrapped_module.")
# One LoRA layer: (adapter name, scaling, fan_in_fan_out, lora_bias), read from the peft module.
_LoraLayer = tuple[str, float, bool, bool]


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
) -> Path:
    """Write `model` as an HF folder loadable with `AutoModel.from_pretrained(..., trust_remote_code=True)`.

    Collective under FSDP2: every rank must call it (the full state dict is gathered onto rank 0's
    CPU); only rank 0 writes, then all ranks learn whether it succeeded. Rank 0 builds the whole
    folder in the hidden sibling `.<out_dir name>.partial` and renames it to `out_dir` at the end,
    so `out_dir` appears only complete; an exception removes the partial folder, a killed process
    leaves it and the next call deletes it and starts over. Writes, inside `out_dir`:

    - `model-*.safetensors` (bf16) + `model.safetensors.index.json` + `config.json`;
    - `generation_config.json`, copied from `base_dir` or Dream's published values, as plain JSON
      (transformers' `GenerationConfig.save_pretrained` breaks on Dream's class, dream.md §16);
    - Dream's tokenizer files from `base_dir` when it has all of them, else every file of
      `tokenizer_dir`; the remote-code `.py` files from `base_dir` (a warning when it lacks them:
      the folder then loads with `load_export` but not with `trust_remote_code`);
    - for LoRA: `adapter/adapter_model.safetensors` + `adapter/adapter_config.json`, while the
      top-level weights are merged (W + scaling * B @ A, in fp32 on a CPU copy; the training
      model is never modified);
    - `dream_job_export.json`: dtype, parameter count, LoRA flag, file list.

    Args:
        model: `DreamModel`, possibly FSDP2-sharded, or a peft model (`PeftModel` or LoRA layers
            injected into a `DreamModel`) when `is_lora`.
        config: The architecture of the (merged) weights.
        out_dir: Destination; must not exist or be empty.
        tokenizer_dir: A folder written by `tokenizer.save_pretrained` (`<run>/data/tokenizer/`).
        base_dir: Local snapshot of the base model (source of remote code, tokenizer and
            generation config); None for tiny smoke models.
        is_lora: The model carries peft LoRA layers; export the adapter and merged weights.

    Returns:
        `out_dir`.

    Raises:
        CheckpointError: `out_dir` is not empty, the weights do not match `config`'s keys and
            shapes, or rank 0 failed (on the other ranks).
        DataError: Neither `base_dir` nor `tokenizer_dir` holds a tokenizer.
        ValueError: `is_lora` disagrees with the model, or a LoRA kind that cannot be merged here.
    """
    out_dir, base_dir = Path(out_dir), None if base_dir is None else Path(base_dir)
    # Checks on every rank before the collective gather, so a bad call fails fast everywhere.
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CheckpointError(
            f"export folder `{out_dir}` already exists and is not empty",
            hint=f"remove it to export again: `rm -r {out_dir}`",
        )
    tokenizer_files = _tokenizer_sources(Path(tokenizer_dir), base_dir)
    lora_layers = _find_lora_layers(model)
    if is_lora != bool(lora_layers):
        raise ValueError(f"`is_lora={is_lora}` but the model has {len(lora_layers)} LoRA layer(s)")
    state = _gather_full_state_dict(model)  # collective under FSDP2; empty except on rank 0 then
    error: BaseException | None = None
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            _write_export(model, state, config, lora_layers, out_dir, tokenizer_files, base_dir)
        except BaseException as exc:  # reported to the other ranks below, then re-raised
            shutil.rmtree(_partial_dir(out_dir), ignore_errors=True)
            error = exc
    del state
    if dist.is_initialized():
        # Doubles as the final barrier; without it the other ranks would run on, or hang in the
        # next collective, when rank 0 failed.
        ok = [error is None]
        dist.broadcast_object_list(ok, src=0)
        if not ok[0] and error is None:
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


def _tokenizer_sources(tokenizer_dir: Path, base_dir: Path | None) -> list[Path]:
    """Pick the tokenizer files to copy: Dream's own from `base_dir`, else all of `tokenizer_dir`."""
    if base_dir is not None and all((base_dir / name).is_file() for name in DREAM_TOKENIZER_FILES):
        return [base_dir / name for name in DREAM_TOKENIZER_FILES]
    if not tokenizer_dir.is_dir() or not any(p.is_file() for p in tokenizer_dir.iterdir()):
        raise DataError(
            f"no tokenizer to export: `{tokenizer_dir}` is not a tokenizer folder and `{base_dir}` lacks "
            f"Dream's tokenizer files",
            hint="run `dream-job prep` first (it writes `<run>/data/tokenizer/`)",
        )
    return sorted(p for p in tokenizer_dir.iterdir() if p.is_file())


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
        fan_in_fan_out = getattr(module, "fan_in_fan_out", False)
        layers[name] = (adapter, float(module.scaling[adapter]), fan_in_fan_out, bool(module.lora_bias[adapter]))
    if len({adapter for adapter, *_ in layers.values()}) > 1:
        raise ValueError("the model has more than one active LoRA adapter; export one at a time")
    return layers


def _gather_full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Return the full (unsharded) state dict; under FSDP2 on rank 0's CPU only (collective)."""
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in model.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {key: tensor.detach() for key, tensor in model.state_dict().items()}


def _plain_key(key: str) -> str:
    """Turn a peft/wrapper parameter name into Dream's checkpoint key."""
    key = key.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")
    for segment in _WRAPPER_SEGMENTS:
        key = key.replace(segment, "")
    return key


def _merge_lora(state: dict[str, Tensor], lora_layers: dict[str, _LoraLayer]) -> dict[str, Tensor]:
    """Return Dream-keyed weights with every LoRA delta folded in; `state` is not modified.

    Merged weights are new fp32 CPU tensors (one bf16 rounding at save time instead of two);
    untouched weights are the same tensors as in `state`.
    """
    merged: dict[str, Tensor] = {}
    for name, (adapter, scaling, fan_in_fan_out, lora_bias) in lora_layers.items():
        A_RI = state[f"{name}.lora_A.{adapter}.weight"].to("cpu", torch.float32)  # R rank, I in
        B_OR = state[f"{name}.lora_B.{adapter}.weight"].to("cpu", torch.float32)  # O out
        delta_OI = (B_OR @ A_RI) * scaling  # peft's `get_delta_weight`
        if fan_in_fan_out:  # Conv1D-style storage keeps the transposed weight
            delta_OI = delta_OI.T
        weight_key = f"{name}.base_layer.weight"
        merged[weight_key] = state[weight_key].to("cpu", torch.float32) + delta_OI
        if lora_bias:
            bias_key = f"{name}.base_layer.bias"
            lora_b = state[f"{name}.lora_B.{adapter}.bias"].to("cpu", torch.float32)
            merged[bias_key] = state[bias_key].to("cpu", torch.float32) + lora_b * scaling
    return {
        _plain_key(key): merged.get(key, tensor)
        for key, tensor in state.items()
        if not any(part.startswith("lora_") for part in key.split("."))  # adapter tensors go to adapter/
    }


def _check_against_config(state: dict[str, Tensor], config: DreamConfig) -> None:
    """Refuse weights whose keys or shapes differ from `config`'s model.

    The official loader only warns about missing tensors and fills them with random values
    (dream.md §18), so an incomplete export must never be written.
    """
    with torch.device("meta"):
        expected = {key: tuple(t.shape) for key, t in DreamModel(config).state_dict().items()}
    problems = [f"missing `{k}`" for k in sorted(expected.keys() - state.keys())]
    problems += [f"unexpected `{k}`" for k in sorted(state.keys() - expected.keys())]
    problems += [
        f"`{k}`: shape {list(state[k].shape)}, config says {list(expected[k])}"
        for k in sorted(expected.keys() & state.keys())
        if tuple(state[k].shape) != expected[k]
    ]
    if problems:
        raise CheckpointError(
            f"the model's weights do not match its config: {len(problems)} problem(s)",
            caused_by=problems,
            hint="export the model built from this config; pass `is_lora=True` for peft models",
        )


def _write_export(
    model: nn.Module, state: dict[str, Tensor], config: DreamConfig, lora_layers: dict[str, _LoraLayer],
    out_dir: Path, tokenizer_files: list[Path], base_dir: Path | None,
) -> None:
    """Rank 0: build the export in the partial folder, then rename it to `out_dir`."""
    partial = _partial_dir(out_dir)
    shutil.rmtree(partial, ignore_errors=True)  # a crashed earlier attempt: start over
    weights = _merge_lora(state, lora_layers)
    _check_against_config(weights, config)
    save_hf_folder(weights, config, partial, dtype=torch.bfloat16)
    del weights

    generation_config = base_dir / GENERATION_CONFIG_NAME if base_dir is not None else None
    if generation_config is not None and generation_config.is_file():
        shutil.copyfile(generation_config, partial / GENERATION_CONFIG_NAME)
    else:
        (partial / GENERATION_CONFIG_NAME).write_text(json.dumps(dream_generation_config(config), indent=2) + "\n")
    for source in tokenizer_files:
        if not (partial / source.name).exists():  # a model folder as `tokenizer_dir` must not replace our weights
            shutil.copyfile(source, partial / source.name)
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
        _write_adapter(model, state, adapter, partial / ADAPTER_DIR_NAME)
    files = sorted(str(p.relative_to(partial)) for p in partial.rglob("*") if p.is_file())
    manifest = {
        "format_version": 1, "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dtype": "bfloat16", "num_parameters": config.num_parameters(), "lora": adapter is not None,
        "lora_adapter": adapter, "remote_code": not missing, "base_dir": None if base_dir is None else str(base_dir),
        "tokenizer_from": str(tokenizer_files[0].parent), "files": sorted([*files, MANIFEST_NAME]),
    }
    (partial / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    # The shards were fsynced by save_hf_folder; syncing them again costs nothing (no dirty pages).
    for path in [*partial.rglob("*"), partial]:
        fsync_path(path)
    if out_dir.exists():
        out_dir.rmdir()  # empty (checked by the caller); rename cannot replace a directory
    partial.rename(out_dir)
    fsync_path(out_dir.parent)  # make the rename durable
    logger.info("exported %s parameters to `%s`", f"{config.num_parameters():,}", out_dir)


def _partial_dir(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.partial")


def _write_adapter(model: nn.Module, state: dict[str, Tensor], adapter: str, folder: Path) -> None:
    """Write peft's `adapter_model.safetensors` + `adapter_config.json` (`PeftModel.from_pretrained` reads them)."""
    from peft.utils import get_peft_model_state_dict

    tensors = get_peft_model_state_dict(model, state_dict=state, adapter_name=adapter, save_embedding_layers=False)
    # Injected layers (no PeftModel around the DreamModel) lack the prefix PeftModel expects on load.
    prefixed = {key if key.startswith(_PEFT_PREFIX) else _PEFT_PREFIX + key: t for key, t in tensors.items()}
    tensors = {key: t.detach().to("cpu").contiguous() for key, t in prefixed.items()}
    folder.mkdir()
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})
    peft_config = copy.deepcopy(model.peft_config[adapter])
    peft_config.inference_mode = True  # as `PeftModel.save_pretrained` writes it
    peft_config.save_pretrained(str(folder))

