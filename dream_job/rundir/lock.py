"""The run dir's lock: `fcntl.flock` on `<run_dir>/.lock`, re-entrant, inherited by child processes.

The kernel releases the lock when its process dies, so a `kill -9` never leaves a stale one.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dream_job.errors import InputError, RunDirBusyError
from dream_job.rundir.names import LOCK_ENV, LOCK_NAME, now_utc
from dream_job.rundir.writing import os_error, writing_to

logger = logging.getLogger(__name__)


_held: dict[Path, tuple[int, int]] = {}  # resolved lock path -> (fd, nesting depth) in this process


def _holder_text(verb: str) -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "verb": verb, "since": now_utc()})


def _describe_holder(lock_path: Path) -> str:
    try:
        holder = json.loads(lock_path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        holder = {}
    pid, host = holder.get("pid", "?"), holder.get("host", "?")
    verb, since = holder.get("verb"), holder.get("since")
    return f"process {pid} on host `{host}`" + (f" (`{verb}`, since {since})" if verb else "")


@contextmanager
def locked_run_dir(run_dir: Path, *, verb: str) -> Iterator[Path]:
    """Hold the run dir's OS lock while the body runs; creates the run dir.

    Re-entrant in one process (the pipeline holds it while calling a stage that also asks), and
    inherited by child processes through `DREAM_JOB_RUN_DIR_LOCKED` (torchrun workers of `run`).
    Where the file system has no locks (some bucket mounts), it warns once and goes on.

    Args:
        run_dir: The run directory.
        verb: What holds it, shown to a second process (`dream-job train`).

    Raises:
        RunDirBusyError: Another process holds it (exit 1, with its PID and host).
        InputError: The run dir is a file or cannot be created.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"run dir `{run_dir}` is a file, not a folder", key="artifacts.run_dir", path=run_dir,
                         hint="point `artifacts.run_dir` at a folder (or remove the file)")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if isinstance(exc, (FileExistsError, NotADirectoryError)):
            raise InputError(f"run dir `{run_dir}` cannot be created: a part of its path is a file",
                             key="artifacts.run_dir", path=run_dir,
                             hint="point `artifacts.run_dir` at a folder") from None
        raise os_error(exc, run_dir) from None
    lock_path = (run_dir / LOCK_NAME).resolve()
    inherited = os.environ.get(LOCK_ENV, "")
    if lock_path in _held or str(lock_path) in inherited.split(os.pathsep):
        fd, depth = _held.get(lock_path, (-1, 0))
        _held[lock_path] = (fd, depth + 1)
        try:
            yield run_dir
        finally:
            fd, depth = _held[lock_path]
            if depth <= 1:
                _held.pop(lock_path)
            else:
                _held[lock_path] = (fd, depth - 1)
        return
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise os_error(exc, lock_path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RunDirBusyError(
            f"run dir `{run_dir}` is in use by {_describe_holder(lock_path)}",
            hint="wait for it to finish or stop it (its lock goes with the process), or use another "
                 "`artifacts.run_dir`",
        ) from None
    except OSError as exc:  # ENOLCK / EOPNOTSUPP: a mount without locks
        logger.warning("run dir `%s` cannot be locked (%s): make sure no other process uses it", run_dir,
                       exc.strerror or exc)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _holder_text(verb).encode(), 0)
    except OSError:
        pass  # the holder's details are for messages only
    _held[lock_path] = (fd, 1)
    previous_env = os.environ.get(LOCK_ENV)
    os.environ[LOCK_ENV] = os.pathsep.join(p for p in (previous_env, str(lock_path)) if p)
    try:
        with writing_to(run_dir):
            yield run_dir
    finally:
        _held.pop(lock_path, None)
        if previous_env is None:
            os.environ.pop(LOCK_ENV, None)
        else:
            os.environ[LOCK_ENV] = previous_env
        os.close(fd)  # releases the flock


def lock_holder(run_dir: Path) -> str | None:
    """Return who holds the run dir's lock ("process 12 on host `h`"), or None when nobody does."""
    lock_path = Path(run_dir) / LOCK_NAME
    if not lock_path.is_file():
        return None
    if lock_path.resolve() in _held:
        return f"this process ({os.getpid()})"
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _describe_holder(lock_path)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None
