"""Follow a local run's `logs/train.log` the way `tail -f` does, until no process works in the run dir.

Input: the run dir. Output: the log's lines, as they are appended. "Working" means holding the run
dir's lock (`dream_job.rundir.lock_holder`), so following ends when the run ends, is killed or was
never running. Imports no torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dream_job.rundir import LOGS_DIR, TRAIN_LOG_NAME, lock_holder

# How often a followed log is read again; lines reach the screen at most this late.
POLL_S = 0.5


def train_log_path(run_dir: Path) -> Path:
    """Return where training writes its plain log lines in `run_dir`."""
    return Path(run_dir) / LOGS_DIR / TRAIN_LOG_NAME


def follow_lines(path: Path, *, follow: bool, is_running: Callable[[], bool], poll_s: float = POLL_S,
                 sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """Yield the lines of `path` (without newline); with `follow`, then new ones until `is_running()` is false.

    A line still being written (no newline yet) is held back until it is complete. A file that does
    not exist yet counts as empty, so a run that has not reached training can be followed too. A file
    rewritten shorter is followed from its new end.

    Args:
        path: The log file.
        follow: Keep reading while `is_running()`; False prints what is there and returns.
        is_running: Whether a process still writes the log (checked after each read that found nothing).
        poll_s: Seconds between reads while following.
        sleep: Replaced in tests.
    """
    offset, pending = 0, b""
    while True:
        chunk = b""
        if path.is_file():
            with path.open("rb") as handle:
                if (size := handle.seek(0, 2)) < offset:
                    # Rewritten shorter: a resumed run dropped the lines after its checkpoint, which
                    # were shown already; go on from the new end, as `tail -f` does.
                    offset, pending = size, b""
                handle.seek(offset)
                chunk = handle.read()
                offset += len(chunk)
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace")
        if chunk:
            continue
        if not follow or not is_running():
            if pending:
                yield pending.decode("utf-8", errors="replace")
            return
        sleep(poll_s)


def run_dir_is_busy(run_dir: Path) -> Callable[[], bool]:
    """Return a check that a process holds `run_dir`'s lock (a run is going on there)."""
    return lambda: lock_holder(run_dir) is not None
