"""Writing into the run dir: the one atomic writer (files and folders) and what an OS error means.

Every write that matters goes through `write_atomically` / `write_dir_atomically` (temp name,
fsync, rename); a full disk or a read-only folder becomes one sentence naming the path
(`os_error`), also when a library reported it without a file name (`writing_to`).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dream_job.errors import DiskFullError, InputError
from dream_job.rundir.names import FILE_MODE, TMP_SUFFIX


def temp_path(path: Path) -> Path:
    """Return the temporary name `path` is written under before the rename (`.<name>.<pid>.tmp-dream-job`)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a temp file next to `path`, fsync it, then rename it over `path`.

    The one way a file that matters is written (stage records, reports, markers, manifests): a
    reader sees the old file or the new one, never half of one. A failed write (disk full,
    read-only, an exception in `write`) removes its temp file, so a retry finds no leftovers.

    Args:
        path: The file to replace; its folder is created.
        write: Writes the whole content to the path it is given (e.g. `fig.savefig`).

    Raises:
        DiskFullError: The disk holding `path` is full (exit 1, names the path).
        InputError: Another OS error, naming the path.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise os_error(exc, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see `write_atomically`)."""
    write_atomically(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically (see `write_atomically`)."""
    write_bytes_atomically(path, text.encode("utf-8"))


def write_json_atomically(path: Path, value: Any, *, indent: int | None = 2, ensure_ascii: bool = True) -> None:
    """Write `value` as JSON (with a final newline) to `path` atomically (see `write_atomically`)."""
    write_text_atomically(path, json.dumps(value, indent=indent, ensure_ascii=ensure_ascii) + "\n")


def write_dir_atomically(folder: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a fresh temp folder next to `folder`, then swap it in for `folder`.

    The folder variant of `write_atomically` (prepared data, a model folder). A directory cannot
    be renamed over a non-empty one, so an existing `folder` is renamed to `.<name>.old`, the new
    one renamed into place and the old one deleted: a reader sees the old folder, the new one or
    (between the two renames) none, never a half-written one. Temp folders a killed earlier call
    left are deleted first; a failed `write` deletes its own.

    Args:
        folder: The folder to create or replace; its parent is created.
        write: Writes the whole content into the (empty, existing) folder it is given.

    Raises:
        DiskFullError: The disk holding `folder` is full (also when a library wrapped the OS error).
        InputError: Another OS error, naming the folder.
    """
    folder = Path(folder)
    tmp = temp_path(folder)
    for stale in folder.parent.glob(f".{folder.name}.*{TMP_SUFFIX}"):  # left by a process killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        write(tmp)
        set_file_modes(tmp)
    except BaseException as exc:  # disk full, Ctrl-C: leave no half-written copy behind
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError) or is_disk_full(exc):
            raise os_error(exc if isinstance(exc, OSError) else OSError(errno.ENOSPC, "No space left on device"),
                           folder) from None
        raise
    old = folder.with_name(f".{folder.name}.old")
    try:
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        fsync_path(folder.parent)  # make the renames durable
    except OSError as exc:
        raise os_error(exc, folder) from None
    shutil.rmtree(old, ignore_errors=True)


def fsync_path(path: Path) -> None:
    """Flush a file's (or folder's) contents to disk, so a later rename publishes complete data."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def os_error(exc: OSError, path: Path) -> InputError:
    """Turn an OS error while writing `path` into one sentence (disk full, read-only, permission)."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"disk full at `{path}`", caused_by=[exc.strerror or "No space left on device"],
                             hint="free space there (old checkpoints, caches) or use a larger disk, then run the "
                                  "same command again; finished work is kept")
    if exc.errno == errno.EROFS:
        return InputError(f"cannot write `{path}`: the file system is read-only", key="artifacts.run_dir", path=path,
                          hint="point `artifacts.run_dir` at a writable folder")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return InputError(f"cannot write `{path}`: permission denied", key="artifacts.run_dir", path=path,
                          hint="point `artifacts.run_dir` at a folder you may write to")
    return InputError(f"cannot write `{path}`: {exc.strerror or exc}", path=path,
                      hint="check the folder exists and is writable, then run the same command again")


_outputs: list[Path] = []  # innermost last: what this process is writing now (`writing_to`)


@contextmanager
def writing_to(path: Path) -> Iterator[Path]:
    """Note that the body writes under `path`, so a full disk reported by a library without a file name
    (safetensors, torch, pyarrow) is still named (`disk_full_path`)."""
    _outputs.append(Path(path))
    try:
        yield Path(path)
    finally:
        _outputs.pop()


def disk_full_path(exc: BaseException) -> Path | None:
    """Return the file a disk-full error was about: the one it names, else what the process was writing."""
    current: BaseException | None = exc
    for _ in range(10):
        if current is None:
            break
        if isinstance(current, OSError) and current.filename:
            return Path(current.filename)
        current = current.__cause__ or current.__context__
    return _outputs[-1] if _outputs else None


def is_disk_full(exc: BaseException) -> bool:
    """Return True when `exc` (or an exception it wraps) is, or reads like, ENOSPC."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(current)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def set_file_modes(folder: Path) -> None:
    """Give every file under `folder` the mode `FILE_MODE` (0644)."""
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, FILE_MODE)
