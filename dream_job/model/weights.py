"""Load and save Dream weights in the HF safetensors layout (dream.md §4, §18).

Input: a folder with `model.safetensors.index.json` + shards, or one `model.safetensors`
(the hub snapshot of `Dream-org/Dream-v0-Base-7B`, or our own export). Output of
`save_hf_folder`: `model-0000k-of-0000n.safetensors` shards, the index and `config.json`,
written atomically. Tokenizer, generation config and remote-code files are the exporter's job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from dream_job.errors import CheckpointError
from dream_job.model.dream import DreamConfig, DreamModel
from dream_job.rundir import write_dir_atomically

INDEX_NAME = "model.safetensors.index.json"
SINGLE_FILE_NAME = "model.safetensors"
MAX_SHARD_BYTES = 5 * 2**30  # HF's default shard limit; budget/memory.py mirrors it (EXPORT_SHARD_BYTES)


class WeightsMismatchError(CheckpointError):
    """The tensors in a weights folder do not match the model's parameters (names or shapes).

    `caused_by` has one line per missing key, unexpected key and wrong shape; `str()` shows them
    too, so a traceback names every offending key.
    """

    def __str__(self) -> str:
        return "\n".join([self.message, *(f"  {line}" for line in self.caused_by)])


@contextmanager
def _open_weights(path: Path, device: str = "cpu") -> Iterator[Any]:
    """Open a safetensors file; a missing, truncated or damaged one is a `CheckpointError` naming it."""
    try:
        handle = safe_open(path, framework="pt", device=device)
    except (SafetensorError, FileNotFoundError) as exc:
        what = "is missing" if isinstance(exc, FileNotFoundError) else f"is not a readable safetensors file ({exc})"
        raise CheckpointError(f"`{path}` {what}",
                              hint="the weights folder is incomplete or damaged: copy, download or export it again"
                              ) from None
    with handle as f:
        yield f


def _read_stored_shapes(folder: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Map every stored tensor name to (shard file name, shape), reading only the headers."""
    if (folder / INDEX_NAME).exists():
        weight_map = json.loads((folder / INDEX_NAME).read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (folder / SINGLE_FILE_NAME).exists():
        files = [SINGLE_FILE_NAME]
    else:
        raise FileNotFoundError(f"no `{INDEX_NAME}` or `{SINGLE_FILE_NAME}` in `{folder}`")
    stored = {}
    for file in files:
        with _open_weights(folder / file) as f:
            for key in f.keys():
                stored[key] = (file, tuple(f.get_slice(key).get_shape()))
    return stored


def _check_keys_and_shapes(
    folder: Path, stored: Mapping[str, tuple[str, tuple[int, ...]]], expected: Mapping[str, tuple[int, ...]]
) -> None:
    problems = [f"missing `{k}`" for k in sorted(expected.keys() - stored.keys())]
    problems += [f"unexpected `{k}` (in `{stored[k][0]}`)" for k in sorted(stored.keys() - expected.keys())]
    num_key_problems = len(problems)
    for key in sorted(expected.keys() & stored.keys()):
        if stored[key][1] != expected[key]:
            problems.append(f"`{key}`: checkpoint shape {list(stored[key][1])}, model shape {list(expected[key])}")
    if problems:
        raise WeightsMismatchError(
            f"weights in `{folder}` do not match the model: {num_key_problems} key(s) missing or unexpected, "
            f"{len(problems) - num_key_problems} shape(s) differ",
            caused_by=problems,
            hint="build the model from the same folder's `config.json` (`DreamConfig.from_pretrained_dir`)",
        )


def load_safetensors_weights(
    model: DreamModel,
    folder: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> None:
    """Load an HF safetensors folder into `model`, replacing its parameters.

    Every key and shape is checked against the model (headers only) before any tensor is read.
    Then shards are read one at a time and their tensors become the model's parameters, so peak
    memory is the model plus one shard. Afterwards the RoPE buffer is recomputed on `device`.
    Parameters are new objects: build optimizers after loading. Not for FSDP-sharded models.

    Args:
        model: A `DreamModel`, normally built under `torch.device("meta")`.
        folder: Folder with `model.safetensors.index.json` + shards, or `model.safetensors`.
        dtype: Cast every tensor to this dtype; None keeps the stored dtype (bf16 for the hub).
        device: Where the tensors are loaded (safetensors reads straight to it).

    Raises:
        FileNotFoundError: The folder has neither an index nor `model.safetensors`.
        WeightsMismatchError: Keys missing or unexpected, or shapes differ;
            names every one.
    """
    folder = Path(folder)
    stored = _read_stored_shapes(folder)
    _check_keys_and_shapes(folder, stored, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    # assign=True rather than copying into a `to_empty` model: on meta there is no storage to
    # copy into, and materialising first would hold the whole model *and* the shard being read
    # (plus a pointless pass over uninitialised memory). Assigning makes each loaded tensor the
    # parameter itself; `requires_grad` is kept from the module's parameter.
    for file in sorted({file for file, _ in stored.values()}):
        with _open_weights(folder / file, str(device)) as f:
            shard = {key: f.get_tensor(key) for key in f.keys()}
        if dtype is not None:
            shard = {key: tensor.to(dtype) for key, tensor in shard.items()}
        model.load_state_dict(shard, strict=False, assign=True)  # keys were checked above
        del shard
    model.init_buffers(device)


def stream_weights(
    folder: str | Path, expected: Mapping[str, tuple[int, ...]], *, device: torch.device | str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the tensors of an HF safetensors folder one at a time, after checking every key and shape.

    The check reads headers only, so a mismatch fails before any tensor is read. Tensors come in
    their stored dtype, read straight to `device`, one file open at a time: a consumer that drops
    each tensor after use (`model.init.fill_parameters`) holds one tensor, not the state dict.
    The open file's pages are file-backed (page cache), not heap.

    Args:
        folder: Folder with `model.safetensors.index.json` + shards, or `model.safetensors`.
        expected: Key -> shape the model needs (plain Dream keys).
        device: Where each tensor is read to.

    Raises:
        FileNotFoundError: No index or `model.safetensors`.
        WeightsMismatchError: Keys or shapes differ; names every one.
    """
    folder = Path(folder)
    stored = _read_stored_shapes(folder)
    _check_keys_and_shapes(folder, stored, expected)
    for file in sorted({file for file, _ in stored.values()}):
        with _open_weights(folder / file, str(device)) as f:
            for key in f.keys():
                yield key, f.get_tensor(key)


def plan_shards(sizes: Mapping[str, int], max_shard_bytes: int) -> list[list[str]]:
    """Greedily cut the keys, in order, into shards of at most `max_shard_bytes` each.

    A tensor bigger than the limit gets a shard of its own (HF does the same).
    """
    shards: list[list[str]] = [[]]
    shard_bytes = 0
    for key, size in sizes.items():
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(key)
        shard_bytes += size
    return shards


def shard_name(number: int, num_shards: int) -> str:
    """Return HF's name of shard `number` (1-based) of `num_shards`: `model-0000k-of-0000n.safetensors`."""
    return f"model-{number:05d}-of-{num_shards:05d}.safetensors"


def write_index_and_config(
    folder: Path, weight_map: Mapping[str, str], total_bytes: int, config: DreamConfig, dtype: torch.dtype
) -> None:
    """Write and fsync `model.safetensors.index.json` and `config.json` (with `torch_dtype`) into `folder`."""
    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    hf_config = config.to_hf_dict(torch_dtype=str(dtype).removeprefix("torch."))
    for name, content in ((INDEX_NAME, index), ("config.json", hf_config)):
        (folder / name).write_text(json.dumps(content, indent=2) + "\n")
        fsync_path(folder / name)


def fsync_path(path: Path) -> None:
    """Flush a file's (or folder's) contents to disk, so a later rename publishes complete data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_hf_folder(
    model: nn.Module | Mapping[str, torch.Tensor],
    config: DreamConfig,
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> None:
    """Write the weights and `config.json` as an HF folder that the official remote code loads.

    Writes `model-0000k-of-0000n.safetensors` (keys in state-dict order, each shard at most
    `max_shard_bytes` unless one tensor is bigger), `model.safetensors.index.json`
    (`metadata.total_size` in bytes, `weight_map`) and `config.json` (`config.to_hf_dict()` with
    `torch_dtype` set). Everything is written and fsynced in a hidden temp folder next to
    `folder`, which is then renamed to `folder` (`rundir.write_dir_atomically`): a crash leaves
    no half-written `folder` (at most a `.<name>.<pid>.tmp-dream-job` folder, deleted by the next
    call); rerunning starts over. One shard at a time is cast
    and held in CPU memory.

    Args:
        model: The model, or a full (unsharded) state dict, e.g. gathered from FSDP on rank 0.
        config: The architecture the weights belong to.
        folder: Destination; must not exist or be empty.
        dtype: Storage dtype of floating-point tensors (bf16 = 15.2 GB for Dream 7B).
        max_shard_bytes: Shard size limit in bytes (HF's default 5 GiB).

    Raises:
        FileExistsError: `folder` exists and is not empty.
        ValueError: The parameter count differs from `config.num_parameters()`.
        DiskFullError, InputError: The folder cannot be written (names it).
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"export folder `{folder}` already exists and is not empty; remove it or pick another")
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    num_params, expected = sum(t.numel() for t in state.values()), config.num_parameters()
    if num_params != expected:
        raise ValueError(f"the weights have {num_params:,} parameters but `config` describes {expected:,}")

    def stored_dtype(t: torch.Tensor) -> torch.dtype:
        return dtype if t.is_floating_point() else t.dtype

    sizes = {k: t.numel() * stored_dtype(t).itemsize for k, t in state.items()}
    shards = plan_shards(sizes, max_shard_bytes)

    def write(tmp: Path) -> None:
        weight_map = {}
        for i, keys in enumerate(shards, start=1):
            name = shard_name(i, len(shards))
            tensors = {k: state[k].detach().to("cpu", stored_dtype(state[k])).contiguous() for k in keys}
            # `format: pt` is what transformers' loader checks for in the header.
            save_file(tensors, tmp / name, metadata={"format": "pt"})
            fsync_path(tmp / name)
            weight_map.update(dict.fromkeys(keys, name))
            del tensors
        write_index_and_config(tmp, weight_map, sum(sizes.values()), config, dtype)

    write_dir_atomically(folder, write)
