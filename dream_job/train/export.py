"""Export a trained Dream model as a Hugging Face folder the official remote code loads.

Input: the training model (a plain `DreamModel`, FSDP2-sharded, or carrying peft LoRA layers),
its `DreamConfig`, the run's tokenizer folder and the base-model snapshot. Output (`<run>/export/`,
dream.md §18): bf16 safetensors shards + index + `config.json`, `generation_config.json`, the
tokenizer the job trained with, Dream's remote-code `.py` files (copied from the base snapshot;
they are never in this repo), `adapter/` for LoRA runs and `dream_job_export.json` describing the
export. `load_export` reads an export back with dream-job's own loader.

The weights stream out one tensor at a time (`train/export_weights.py`), LoRA deltas folded in
with peft's own code (`train/export_lora.py`): rank 0's host memory is one bf16 tensor + the fp32
adapters + one merge's working copies, never a whole shard or the whole model: at Dream 7B the
whole-model fp32 merge this replaces needed ~47 GiB of host RAM, filling whole 5 GiB shards ~5.6 GiB
(`budget/memory.py: export_host_bytes`; measured by `bench/export_rss.py` and `bench/host_memory.py`).
This module builds the folder around the weights and makes it appear only complete.
"""

from __future__ import annotations

import logging
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dream_job.errors import CheckpointError
from dream_job.model.dream import DreamConfig, DreamModel
from dream_job.model.tokenizer_files import tokenizer_sources, write_tokenizer_files
from dream_job.model.weights import load_safetensors_weights
from dream_job.rundir import EXPORT_INFO_NAME, fsync_path, set_file_modes, write_json_atomically
from dream_job.train.distributed import current_rank
from dream_job.train.export_lora import LoraLayerInfo, find_lora_layers, write_adapter
from dream_job.train.export_weights import full_value, plan_weights, rank0_succeeded, to_host, write_weights

logger = logging.getLogger(__name__)

REMOTE_CODE_FILES = ("configuration_dream.py", "modeling_dream.py", "generation_utils.py", "tokenization_dream.py")
GENERATION_CONFIG_NAME = "generation_config.json"
ADAPTER_DIR_NAME = "adapter"


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
    lora_layers = find_lora_layers(model)
    if is_lora != bool(lora_layers):
        raise ValueError(f"`is_lora={is_lora}` but the model has {len(lora_layers)} LoRA layer(s)")
    state = model.state_dict()  # under FSDP2 this rank's shards (DTensors): nothing is gathered yet
    plan = plan_weights(state, lora_layers, config)  # identical on every rank: a mismatch fails on all
    is_rank0 = current_rank() == 0
    adapters: dict[str, Tensor] = {}
    for key in plan.adapter_keys:  # small (rank x (in + out) per layer): kept for the merges and adapter/
        full = full_value(state[key])  # collective under FSDP2
        if is_rank0:
            adapters[key] = to_host(full, full.dtype)
    partial = _partial_dir(out_dir)
    error = write_weights(state, plan, adapters, config, partial, is_rank0)
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
    if not rank0_succeeded(error) and error is None:
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


def _finish_export(
    model: nn.Module, adapters: dict[str, Tensor], config: DreamConfig, lora_layers: dict[str, LoraLayerInfo],
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
        write_adapter(model, adapters, adapter, partial / ADAPTER_DIR_NAME)
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
