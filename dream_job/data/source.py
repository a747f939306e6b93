"""Open the dataset named by `data.dataset`: a hub id or a local file or folder.

Returns a `datasets.Dataset` plus a fingerprint of its content, which keys the prep cache:
for local files the sha256 of their bytes, for hub datasets the id, revision and the
fingerprint `datasets` computes for the downloaded revision.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from dream_job.data.tokenizer import is_local
from dream_job.errors import DataError
from dream_job.spec import DataSpec

_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow"}


def _sha256_files(files: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _BUILDERS)


def read_local_dataset(path: Path, split: str) -> tuple[Any, list[Path]] | None:
    """Load an existing local dataset: a `save_to_disk` folder, or a file or folder of one kind of data file.

    Shared by prep (`data.dataset`) and evaluation (`eval.sources`); each names its own errors.

    Returns:
        `(dataset, files read)`, or None when `path` holds no single kind of data file.
    """
    import datasets

    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
        return dataset, sorted(p for p in path.rglob("*") if p.is_file())
    files = _local_files(path)
    builders = {_BUILDERS.get(f.suffix) for f in files}
    if not files or None in builders or len(builders) != 1:
        return None
    return datasets.load_dataset(builders.pop(), data_files={split: [str(f) for f in files]}, split=split), files


def load_rows(spec: DataSpec) -> tuple[Any, str]:
    """Load the dataset split the spec names.

    Args:
        spec: The `data` section.

    Returns:
        `(dataset, fingerprint)`.

    Raises:
        DataError: The path does not exist, has no readable data files, or the hub dataset
            or split cannot be loaded.
    """
    import datasets

    name = spec.dataset
    try:
        if not is_local(name):
            dataset = datasets.load_dataset(name, revision=spec.revision, split=spec.split)
            return dataset, f"{name}@{spec.revision or 'default'}:{dataset._fingerprint}"
        path = Path(name).expanduser()
        if not path.exists():
            raise DataError(
                f"`data.dataset` points to `{name}`, which does not exist",
                hint="check the path (relative paths start at the working directory) or use a hub id such as "
                "`simplescaling/s1K-1.1`",
            )
        local = read_local_dataset(path, spec.split)
        if local is None:
            raise DataError(
                f"`data.dataset` points to `{name}`, which holds no single kind of data file",
                hint="use one .parquet, .jsonl, .json or .arrow file (or a folder of one kind)",
            )
        dataset, files = local
        return dataset, "file:" + _sha256_files(files)
    except DataError:
        raise
    except (FileNotFoundError, ValueError, OSError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise DataError(
            f"cannot load the dataset `{name}` (split `{spec.split}`) given by `data.dataset`",
            caused_by=[str(exc).splitlines()[0] if str(exc) else type(exc).__name__],
            hint="check the id, revision and split; gated datasets need `HF_TOKEN` in the environment",
        ) from None
