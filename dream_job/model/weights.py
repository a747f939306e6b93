"""Load and save Dream weights in the HF safetensors layout (dream.md §4, §18).

Input: a folder with `model.safetensors.index.json` + shards, or one `model.safetensors`
(the hub snapshot of `Dream-org/Dream-v0-Base-7B`, or our own export). Output of
`save_hf_folder`: `model-0000k-of-0000n.safetensors` shards, the index and `config.json`,
written atomically. Tokenizer, generation config and remote-code files are the exporter's job.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from dream_job.errors import CheckpointError
from dream_job.model.dream import DreamConfig, DreamModel
from dream_job.rundir import fsync_path, write_dir_atomically

INDEX_NAME = "model.safetensors.index.json"
SINGLE_FILE_NAME = "model.safetensors"
MAX_SHARD_BYTES = 5 * 2**30  # HF's default shard limit
# The safetensors format's dtype names (https://github.com/huggingface/safetensors, "Format").
SAFETENSORS_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
    torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
}
_TORCH_DTYPES = {name: dtype for dtype, name in SAFETENSORS_DTYPES.items()}


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


def weights_digest(folder: Path) -> str:
    """Return the sha256 over the bytes of every weight file of a folder (in name order), with their names.

    What identifies a model's weights wherever its folder is mounted: a cache keyed on it (the eval
    items) is never reused for other or missing weights. Reads every byte (about 10 s for Dream
    7B's 15 GB).

    Raises:
        CheckpointError: The folder has no weights, or a shard its index names is missing.
    """
    import hashlib

    folder = Path(folder)
    if (folder / INDEX_NAME).is_file():
        try:
            files = sorted(set(json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"`{folder / INDEX_NAME}` is damaged: it has no `weight_map` of files",
                                  path=folder / INDEX_NAME,
                                  hint="copy, download or export the model folder again") from None
    elif (folder / SINGLE_FILE_NAME).is_file():
        files = [SINGLE_FILE_NAME]
    else:
        raise CheckpointError(f"`{folder}` has no `{INDEX_NAME}` or `{SINGLE_FILE_NAME}`", path=folder,
                              hint="pass a folder written by `dream-job train` (`<run_dir>/export/`) or a Dream hub "
                                   "snapshot")
    total = hashlib.sha256()
    for name in files:
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"the weights of `{folder}` are incomplete: `{name}` is missing", path=path,
                                  hint="copy, download or export the model folder again (for the run's own export: "
                                       "delete it and run `dream-job train`, which exports from the last checkpoint)")
        file_hash = hashlib.sha256()
        with path.open("rb") as handle:
            while block := handle.read(8 * 2**20):
                file_hash.update(block)
        total.update(f"{name}\0{file_hash.hexdigest()}\n".encode())
    return total.hexdigest()


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
    Then the tensors are read one at a time (`stream_weights`) and become the model's parameters,
    so peak memory is the model plus one tensor. Afterwards the RoPE buffer is recomputed on `device`.
    Parameters are new objects: build optimizers after loading. Not for FSDP-sharded models.

    Args:
        model: A `DreamModel`, normally built under `torch.device("meta")`.
        folder: Folder with `model.safetensors.index.json` + shards, or `model.safetensors`.
        dtype: Cast every tensor to this dtype; None keeps the stored dtype (bf16 for the hub).
        device: Where the tensors are loaded (each is read on the CPU, then moved there).

    Raises:
        FileNotFoundError: The folder has neither an index nor `model.safetensors`.
        WeightsMismatchError: Keys missing or unexpected, or shapes differ;
            names every one.
    """
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # assign=True rather than copying into a `to_empty` model: on meta there is no storage to
    # copy into, and materialising first would hold the whole model *and* the tensor being read
    # (plus a pointless pass over uninitialised memory). Assigning makes each loaded tensor the
    # parameter itself; `requires_grad` is kept from the module's parameter.
    for key, tensor in stream_weights(folder, expected, device=device):
        model.load_state_dict({key: tensor if dtype is None else tensor.to(dtype)}, strict=False, assign=True)
    model.init_buffers(device)


def stream_weights(
    folder: str | Path, expected: Mapping[str, tuple[int, ...]], *, device: torch.device | str = "cpu"
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield the tensors of an HF safetensors folder one at a time, after checking every key and shape.

    The check reads headers only, so a mismatch fails before any tensor is read. Each tensor is
    read with plain file reads (no memory map) into a new CPU tensor of its stored dtype, then
    moved to `device`: a consumer that drops each tensor after use (`model.init.fill_parameters`)
    holds one tensor in host RAM, not the state dict and not a mapped shard file (the kernel's
    page cache keeps what was read; it is reclaimable and no process's RSS).

    Args:
        folder: Folder with `model.safetensors.index.json` + shards, or `model.safetensors`.
        expected: Key -> shape the model needs (plain Dream keys).
        device: Where each tensor goes.

    Raises:
        FileNotFoundError: No index or `model.safetensors`.
        WeightsMismatchError: Keys or shapes differ; names every one.
        CheckpointError: A shard is truncated, or stores a dtype this reader does not know.
    """
    folder = Path(folder)
    stored = _read_stored_shapes(folder)
    _check_keys_and_shapes(folder, stored, expected)
    for file in sorted({file for file, _ in stored.values()}):
        path = folder / file
        with path.open("rb") as f:
            (header_size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_size))
            header.pop("__metadata__", None)
            start = 8 + header_size
            for key, info in sorted(header.items(), key=lambda item: item[1]["data_offsets"][0]):
                yield key, _read_tensor(f, path, key, info, start).to(device)


def _read_tensor(f: BinaryIO, path: Path, key: str, info: dict[str, Any], start: int) -> torch.Tensor:
    """Read one tensor described by its safetensors header entry into a new CPU tensor."""
    begin, end = info["data_offsets"]
    if info["dtype"] not in _TORCH_DTYPES:
        raise CheckpointError(f"`{path}`: tensor `{key}` has dtype `{info['dtype']}`, which dream-job cannot read",
                              hint="store the weights as bf16, fp16 or fp32 safetensors")
    data = torch.empty(end - begin, dtype=torch.uint8)
    f.seek(start + begin)
    if f.readinto(memoryview(data.numpy())) != end - begin:
        raise CheckpointError(f"`{path}` is truncated (tensor `{key}`)",
                              hint="the weights folder is incomplete or damaged: copy, download or export it again")
    return data.view(_TORCH_DTYPES[info["dtype"]]).reshape(info["shape"])


class ShardWriter:
    """Write one safetensors file tensor by tensor, holding only the tensor being written.

    The header (every key's dtype, shape and byte range) is written first, from `layout`; then
    each `write` appends one tensor's bytes, in `layout`'s order. `close` checks that every tensor
    came, flushes and fsyncs. The file is what `safetensors.torch.save_file` writes for the same
    tensors apart from the order of the data (readers locate tensors by the header's offsets).

    Args:
        path: The file to create.
        layout: Key -> (dtype, shape), in the order the tensors will be written.
        metadata: The header's `__metadata__` (`{"format": "pt"}` is what transformers checks for).
    """

    def __init__(self, path: Path, layout: Mapping[str, tuple[torch.dtype, tuple[int, ...]]],
                 metadata: Mapping[str, str]) -> None:
        header: dict[str, Any] = {"__metadata__": dict(metadata)}
        offset = 0
        for key, (dtype, shape) in layout.items():
            size = dtype.itemsize * _numel(shape)
            header[key] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                           "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # the format pads the header with spaces to 8 bytes
        self.path, self.layout, self.pending = Path(path), dict(layout), list(layout)[::-1]
        self.file = self.path.open("wb")
        self.file.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        """Append `tensor` (a CPU tensor) as `key`, the next key of the layout, with its dtype and shape."""
        expected = self.pending.pop() if self.pending else None
        dtype, shape = self.layout.get(key, (None, None))
        if key != expected or tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape or ()):
            raise ValueError(f"`{self.path.name}`: got `{key}` {tensor.dtype} {list(tensor.shape)}, expected "
                             f"`{expected}` {dtype} {shape}")
        self.file.write(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))

    def close(self) -> None:
        """Finish the file: every key of the layout must have been written; flush and fsync."""
        if self.pending:
            self.file.close()
            raise ValueError(f"`{self.path.name}`: {len(self.pending)} tensor(s) not written, "
                             f"first `{self.pending[-1]}`")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


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
