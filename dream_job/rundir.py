"""The run-directory contract: names, stage records, the atomic writer, the lock, JSONL reading.

Every stage imports this module and nothing here imports a stage. Layout (architecture.md):

    <run_dir>/.lock                      OS file lock held by the one process working here (PID, host inside)
    <run_dir>/stages/<stage>.done        JSON stage record: fingerprint of its inputs, outcome, output digest
    <run_dir>/run.json                   the run id and job name (`run_id`)
    <run_dir>/data/                      prepared data, `data_report.json`, `tokenizer/`
    <run_dir>/checkpoints/step-000120/   DCP shards, then the `COMPLETE` marker (torn ones have none)
    <run_dir>/export/                    HF folder; `dream_job_export.json` is written last
    <run_dir>/eval/ logs/ cost.json

A published folder (the export, at a destination) also holds `MANIFEST.sha256` and
`dream_job_run.json`; a checkpoint synced to a destination holds `MANIFEST.sha256` too.

A stage record is written when a stage starts (`running`) and when it ends (`done`,
`stopped_by_budget`, `interrupted` or `failed`), by whichever verb ran it, so `dream-job status`
and `dream-job run` read the same truth. The lock is `fcntl.flock` on `.lock`: the kernel
releases it when the process dies, so a `kill -9` never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dream_job.errors import DiskFullError, InputError, RunDirBusyError
from dream_job.spec import RUN_NAME_RE, JobSpec  # RUN_NAME_RE: re-exported (the spec checks job names with it)

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
STAGES_DIR = "stages"
DATA_DIR = "data"
CHECKPOINTS_DIR = "checkpoints"
EXPORT_DIR = "export"
EVAL_DIR = "eval"
LOGS_DIR = "logs"
METRICS_NAME = "metrics.jsonl"
TRAIN_LOG_NAME = "train.log"
RUN_INFO_NAME = "run.json"
COST_NAME = "cost.json"
EVAL_SUMMARY_NAME = "summary.json"  # in `eval/`: {label: {suite: stats}}
LOSS_PLOT_NAME = "loss.png"  # in `logs/`: the training curves
# In `data/` (written by prep, one folder swapped in whole): the tokenized training rows
# (`datasets.save_to_disk`), the held-out rows as text, the tokenizer, the report.
TRAIN_ROWS_DIR = "train"
HOLDOUT_NAME = "holdout.jsonl"
TOKENIZER_NAME = "tokenizer"
DATA_REPORT_NAME = "data_report.json"  # counts, length statistics, `inputs_hash`
TOKENIZER_DIR = f"{DATA_DIR}/{TOKENIZER_NAME}"  # relative to the run dir
# The export's own description (dtype, files, `exported_at`), written by `train/export.py` last.
EXPORT_INFO_NAME = "dream_job_export.json"
# A published folder's (and a synced checkpoint's) file list: `<sha256>  <relative path>` lines.
MANIFEST_NAME = "MANIFEST.sha256"
# Which run owns a destination root (`{"run_id": ...}`), so a second run does not overwrite it.
RUN_MARKER_NAME = "dream_job_run.json"
# A checkpoint counts only when this marker is in its folder; it is written last.
COMPLETE_NAME = "COMPLETE"
STEP_RE = re.compile(r"step-(\d+)")  # a checkpoint folder name; `checkpoint_name` writes it
PARTIAL_STEP_RE = re.compile(r"\.step-\d+\.partial")  # a checkpoint being saved (torn if left behind)
# Every file being written into place ends with this (never listed in a manifest, removed when stale).
TMP_SUFFIX = ".tmp-dream-job"
# The mode of every file written into place: readable by all, whatever wrote it (safetensors
# writes its files 0600; a copy keeps its source's mode).
FILE_MODE = 0o644
# The environment variables that name the run (`run_id`).
RUN_ID_ENV = "DREAM_JOB_RUN_ID"  # set by `dream-job launch`
SKYPILOT_TASK_ID_ENV = "SKYPILOT_TASK_ID"  # the same across the recoveries of a managed job
# Outcomes of a stage record; only `done` lets a later run skip the stage.
DONE, STOPPED_BY_BUDGET, INTERRUPTED, FAILED, RUNNING = "done", "stopped_by_budget", "interrupted", "failed", "running"
RECORD_VERSION = 2
# Set for child processes (torchrun workers) of the process that holds the lock: they work under it.
LOCK_ENV = "DREAM_JOB_RUN_DIR_LOCKED"


def checkpoint_name(step: int) -> str:
    """Return the folder name of checkpoint `step` (`step-000120`)."""
    return f"step-{step:06d}"


def partial_checkpoint_name(step: int) -> str:
    """Return the hidden folder a checkpoint of `step` is saved into before it is renamed (`.step-000120.partial`)."""
    return f".{checkpoint_name(step)}.partial"


def complete_checkpoints(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    """Return (step, folder) of every checkpoint in `checkpoints_dir` with its `COMPLETE` marker, oldest first."""
    root = Path(checkpoints_dir)
    found = []
    for path in root.iterdir() if root.is_dir() else ():
        if (m := STEP_RE.fullmatch(path.name)) and (path / COMPLETE_NAME).is_file():
            found.append((int(m[1]), path))
    return sorted(found)


def run_id(spec: JobSpec) -> str:
    """Return the run id: `DREAM_JOB_RUN_ID` (set by `dream-job launch`), else `SKYPILOT_TASK_ID`
    (the same across recoveries), else the job name."""
    return os.environ.get(RUN_ID_ENV) or os.environ.get(SKYPILOT_TASK_ID_ENV) or spec.name


def stage_record_path(run_dir: Path, stage: str) -> Path:
    """Return the record file of `stage` (`<run_dir>/stages/<stage>.done`)."""
    return Path(run_dir) / STAGES_DIR / f"{stage}.done"


def now_utc() -> str:
    """Return the time as `2026-12-05T13:07:45Z` (stage records, logs)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def digest(*parts: Any) -> str:
    """Return the sha256 of `parts` as canonical JSON (the fingerprint of a stage's inputs)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# --- writing -------------------------------------------------------------------------------


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
        _fsync_dir(folder.parent)  # make the renames durable
    except OSError as exc:
        raise os_error(exc, folder) from None
    shutil.rmtree(old, ignore_errors=True)


def set_file_modes(folder: Path) -> None:
    """Give every file under `folder` the mode `FILE_MODE` (0644)."""
    for path in Path(folder).rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, FILE_MODE)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
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


# --- JSONL ---------------------------------------------------------------------------------


def read_jsonl(path: Path, *, repair: bool = False) -> list[dict[str, Any]]:
    """Return the JSON objects of a JSONL file, skipping torn or undecodable lines.

    A process killed mid-write leaves a last line without its newline, possibly cut inside a
    UTF-8 character. Such lines (and any line that is not a JSON object) are skipped with one
    warning. With `repair`, a torn tail is cut off the file (the caller must own the file, e.g.
    hold the run-dir lock), so later appends start on a fresh line.

    Args:
        path: The file; a missing file reads as empty.
        repair: Truncate a torn last line in place.
    """
    path = Path(path)
    if not path.is_file():
        return []
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    num_bad = 0
    end = data.rfind(b"\n") + 1  # bytes after the last newline are a torn line
    for raw in data[:end].split(b"\n"):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            num_bad += 1
            continue
        if isinstance(record, dict):
            records.append(record)
        else:
            num_bad += 1
    torn = data[end:]
    if torn.strip():
        try:  # a complete record missing only its newline is kept
            record = json.loads(torn.decode("utf-8"))
            if isinstance(record, dict):
                records.append(record)
                torn = b""
        except (UnicodeDecodeError, json.JSONDecodeError):
            num_bad += 1
    if num_bad:
        logger.warning("skipped %d torn or unreadable line(s) in `%s`", num_bad, path)
    if repair and torn:
        try:
            with path.open("r+b") as f:
                f.truncate(end)
        except OSError as exc:
            raise os_error(exc, path) from None
        logger.info("cut a torn last line off `%s`", path)
    return records


def append_line(path: Path, text: str) -> None:
    """Append one line (with its newline) to `path`, starting a new line if the file ends torn."""
    path = Path(path)
    try:
        with path.open("ab+") as f:
            size = f.seek(0, os.SEEK_END)
            prefix = b""
            if size:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    prefix = b"\n"
            f.write(prefix + text.encode("utf-8"))
    except OSError as exc:
        raise os_error(exc, path) from None


# --- stage records -------------------------------------------------------------------------


@dataclass(frozen=True)
class StageRecord:
    """What `stages/<stage>.done` says about one stage.

    Attributes:
        stage: `prep`, `train`, `eval` or `publish`.
        fingerprint: Digest of everything the stage read (spec fields, dataset digest, upstream digest).
        inputs: The parts of the fingerprint, for messages (`spec` fields, `dataset`, `upstream`).
        outcome: `running`, `done`, `stopped_by_budget`, `interrupted` or `failed`.
        output_digest: Digest of what the stage produced (downstream fingerprints include it).
        reason: Why it stopped, for every outcome but `done`.
        summary: Small facts for status lines (`rows_kept`, `steps`, ...).
        verb: The command that ran it (`dream-job train`, `dream-job run`).
        started_at, finished_at: UTC times.
    """

    stage: str
    fingerprint: str
    inputs: dict[str, Any]
    outcome: str
    output_digest: str | None = None
    reason: str | None = None
    summary: dict[str, Any] | None = None
    verb: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @property
    def is_done(self) -> bool:
        return self.outcome == DONE

    def to_json(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, **self.__dict__}


def read_stage_record(run_dir: Path, stage: str) -> StageRecord | None:
    """Return the record of `stage`, or None when there is none (or it is of an older layout)."""
    path = stage_record_path(run_dir, stage)
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        logger.warning("ignoring unreadable stage record `%s`", path)
        return None
    if not isinstance(body, dict) or body.get("version") != RECORD_VERSION:
        return None  # a record of an older dream-job: the stage runs again (its own reuse keeps it cheap)
    fields = StageRecord.__dataclass_fields__
    return StageRecord(**{k: v for k, v in body.items() if k in fields})


def write_stage_record(run_dir: Path, record: StageRecord) -> None:
    """Write a stage record atomically."""
    write_json_atomically(stage_record_path(run_dir, record.stage), record.to_json())


def export_digest(export_dir: Path) -> str | None:
    """Return a digest that changes whenever the export is rewritten, or None without a complete export.

    Cheap on a 15 GB export: the export's own `dream_job_export.json` (which carries `exported_at`
    and is written last) plus the name and size of every file, not the weights' bytes.
    """
    info = Path(export_dir) / EXPORT_INFO_NAME
    if not info.is_file():
        return None
    files = sorted((p.relative_to(export_dir).as_posix(), p.stat().st_size)
                   for p in Path(export_dir).rglob("*") if p.is_file())
    return digest(info.read_text(encoding="utf-8"), files)


# --- lock ----------------------------------------------------------------------------------

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
