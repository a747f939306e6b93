"""Open the dataset named by `data.dataset`: a hub id or a local file or folder.

Returns a `datasets.Dataset` plus a fingerprint of its content, which keys the prep cache:
for local files the sha256 of their bytes, for hub datasets the id, revision and the
fingerprint `datasets` computes for the downloaded revision.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from dream_job.errors import EXIT_TRANSIENT, DataError
from dream_job.spec import DataSpec

# One probe of the Hub before a download, so an unreachable network fails in seconds, not after
# a minute of retry warnings from `datasets` (issue 15); two attempts fit the 30 s preflight bound.
HUB_PROBE_TIMEOUT_S = 10.0
HUB_PROBE_ATTEMPTS = 2
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_local(name: str) -> bool:
    """Return True when `name` should be read from disk rather than the Hugging Face hub."""
    path = Path(name).expanduser()
    return (
        path.exists()
        or not _HUB_ID.match(name)
        or name.startswith((".", "/", "~"))
        or path.suffix in {".parquet", ".jsonl", ".json", ".arrow"}
    )

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


def check_data_files(files: list[Path]) -> None:
    """Check local data files before `datasets` reads them, naming the file and line of a problem.

    JSON Lines files must be UTF-8 with one JSON object per line, JSON files UTF-8, parquet files
    must hold rows. `datasets` reports these only as "An error occurred while generating the dataset".

    Raises:
        DataError: A file is empty, not UTF-8, has a line that is not a JSON object, or has no rows.
    """
    for file in files:
        if file.suffix == ".parquet":
            import pyarrow.parquet as pq

            try:
                num_rows = pq.ParquetFile(file).metadata.num_rows
            except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
                raise DataError(f"`{file}` is not a readable parquet file", caused_by=[str(exc).splitlines()[0]],
                                hint="write it again (e.g. `pandas.DataFrame.to_parquet`)") from None
            if num_rows == 0:
                raise DataError(f"`{file}` has no rows", hint="point `data.dataset` at a file with rows")
            continue
        if file.suffix not in (".jsonl", ".json"):
            continue
        data = file.read_bytes()
        if not data.strip():
            raise DataError(f"`{file}` is empty", hint="point `data.dataset` at a file with rows")
        if file.suffix == ".json" and data.lstrip()[:1] in (b"[", b"{"):
            _check_utf8(file, data)
            continue
        for number, line in enumerate(data.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"line {number} of `{file}` is not UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1})",
                    hint="re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
                ) from None
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataError(f"line {number} of `{file}` is not valid JSON ({exc.msg} at column {exc.colno})",
                                hint="fix or delete that line; each line must be one JSON object") from None
            if not isinstance(record, dict):
                raise DataError(f"line {number} of `{file}` is a JSON {type(record).__name__}, not an object",
                                hint="each line must be one JSON object with the s1K-1.1 columns")


def _check_utf8(file: Path, data: bytes) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"line {line} of `{file}` is not UTF-8 (byte 0x{data[exc.start]:02x})",
                        hint="re-save the file as UTF-8") from None


def hub_offline() -> bool:
    """Return True when `HF_HUB_OFFLINE` (or `HF_DATASETS_OFFLINE`) asks for the local cache only."""
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def check_hub_repo(repo_id: str, revision: str | None, *, repo_type: str, key: str) -> None:
    """Check quickly that a Hub repo can be read: network, id, revision and access.

    Makes at most `HUB_PROBE_ATTEMPTS` requests of `HUB_PROBE_TIMEOUT_S` each. Under
    `HF_HUB_OFFLINE` nothing is requested (the caller reads the local cache).

    Args:
        repo_id: `org/name`.
        revision: Branch, tag or commit; None for the default branch.
        repo_type: `model` or `dataset`.
        key: The spec key that named it (`model.base`, `data.dataset`), for messages.

    Raises:
        DataError: Unreachable network (exit 3, naming `HF_HUB_OFFLINE` and local paths), a
            repo or revision that does not exist, or a gated/private repo without `HF_TOKEN` (exit 1).
    """
    if hub_offline():
        return
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    last: BaseException | None = None
    for _ in range(HUB_PROBE_ATTEMPTS):
        try:
            # The endpoint from the environment now, not from when huggingface_hub was imported.
            api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
            api.repo_info(repo_id, repo_type=repo_type, revision=revision, timeout=HUB_PROBE_TIMEOUT_S)
            return
        except GatedRepoError:
            raise DataError(f"`{key}` `{repo_id}` is gated or private and `HF_TOKEN` does not grant access",
                            hint="accept its terms on the Hub and export a read token: `export HF_TOKEN=hf_...`") from None
        except RevisionNotFoundError:
            raise DataError(f"`{key}` `{repo_id}` has no revision `{revision}`",
                            hint="check the branch, tag or commit of the revision setting") from None
        except RepositoryNotFoundError:
            raise DataError(f"`{key}` `{repo_id}` is not a {repo_type} on the Hugging Face Hub (or it is private)",
                            hint="check the id; private repos need `HF_TOKEN` in the environment") from None
        except Exception as exc:  # httpx/requests network errors and timeouts; HTTP 5xx
            last = exc
    raise DataError(
        f"cannot reach the Hugging Face Hub for `{key}` `{repo_id}`: the network or the Hub is unavailable",
        caused_by=[f"{type(last).__name__}: {str(last).splitlines()[0] if str(last) else ''}"],
        hint=f"check the network (or `HF_ENDPOINT`), set `HF_HUB_OFFLINE=1` to use a cached copy, or set `{key}` to a "
             "local path",
        exit_code=EXIT_TRANSIENT,
    )


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
    check_data_files(files)
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
            check_hub_repo(name, spec.revision, repo_type="dataset", key="data.dataset")
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
    except ConnectionError as exc:  # `datasets` gave up reaching the Hub (offline, no cached copy)
        raise DataError(
            f"cannot load the dataset `{name}` given by `data.dataset`: the Hub is unreachable and no cached copy "
            "was found",
            caused_by=[str(exc).splitlines()[0]],
            hint="check the network, unset `HF_HUB_OFFLINE` if it is set, or set `data.dataset` to a local path",
            exit_code=EXIT_TRANSIENT,
        ) from None
    except (FileNotFoundError, ValueError, OSError, StopIteration, datasets.exceptions.DatasetsError) as exc:
        cause = exc.__cause__ or exc
        raise DataError(
            f"cannot load the dataset `{name}` (split `{spec.split}`) given by `data.dataset`",
            caused_by=[str(cause).splitlines()[0] if str(cause) else type(cause).__name__],
            hint="check the id, revision and split; gated datasets need `HF_TOKEN` in the environment",
        ) from None
