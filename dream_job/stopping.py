"""The one signal policy of the process: SIGTERM and Ctrl-C stop every stage at a safe point.

`install()` (called once by the CLI, before any verb runs) puts one handler on SIGTERM and
SIGINT that records the request. Outside a `deferred()` block the handler also raises
`StopRequested` at once: every stage writes through the atomic writers (`rundir`), so stopping
between two Python instructions keeps what is complete and leaves no half-written file. Inside a
`deferred()` block (a training step and its checkpoint, the swap of a finished export) the request
is only recorded, and the code polls `check()` at its next safe point; a second Ctrl-C there stops
at once. A request is never dropped: every stage boundary calls `check()`, so nothing downstream
starts after a stop was asked for, even when the signal landed where it could not raise (a
`__del__`, a weakref callback: `sys.unraisablehook` keeps those silent).

SIGTERM (spot preemption) ends with exit 3 (transient: run the same command again), Ctrl-C with
130. A child process started with SIGINT ignored (eval shards) keeps ignoring it.

For tests, `pause_point(name)` blocks at a named point while `DREAM_JOB_PAUSE_AT` names it, after
creating the marker file `<DREAM_JOB_PAUSE_DIR>/<name>`, until a signal arrives: a test waits for
the marker, then signals, with no sleeps.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dream_job.errors import EXIT_INTERRUPTED, EXIT_TRANSIENT, DreamJobError

logger = logging.getLogger(__name__)

CTRL_C, SIGTERM = "Ctrl-C", "SIGTERM"
# Test hook (see the module docstring): comma-separated point names, and where their markers go.
PAUSE_AT_ENV = "DREAM_JOB_PAUSE_AT"
PAUSE_DIR_ENV = "DREAM_JOB_PAUSE_DIR"


class StopRequested(DreamJobError):
    """SIGTERM (exit 3) or Ctrl-C (exit 130) stopped the command at a safe point; finished work is kept."""


class _State:
    signal_name: str | None = None
    deferred = 0
    installed = False
    forward_to: list[Callable[[int], None]] = []


_state = _State()


def stop_error(signal_name: str, message: str | None = None, hint: str | None = None) -> StopRequested:
    """Return the error that reports a stop by `signal_name` (`Ctrl-C`: exit 130, `SIGTERM`: exit 3)."""
    default = ("interrupted by Ctrl-C; work finished so far is kept" if signal_name == CTRL_C
               else f"stopped by {signal_name}; work finished so far is kept")
    return StopRequested(message or default, hint=hint or "run the same command again to continue",
                         exit_code=EXIT_INTERRUPTED if signal_name == CTRL_C else EXIT_TRANSIENT)


def _handle(signum: int, frame: Any) -> None:
    name = CTRL_C if signum == signal.SIGINT else SIGTERM
    again = _state.signal_name is not None
    if _state.signal_name is None or name == CTRL_C:
        _state.signal_name = name
    for forward in list(_state.forward_to):
        forward(signum)
    if _state.deferred and not (again and signum == signal.SIGINT):
        if not again:
            logger.warning("%s: stopping at the end of this step (press Ctrl-C again to stop at once)", name)
        return
    raise stop_error(name)


def _quiet_unraisable(hook: Callable[[Any], None]) -> Callable[[Any], None]:
    def unraisable(info: Any) -> None:
        # A stop that landed in a `__del__` or weakref callback cannot propagate; it is recorded
        # and raised again at the next `check()`, so it is no error to print.
        if isinstance(info.exc_value, (StopRequested, KeyboardInterrupt)):
            return
        hook(info)
    return unraisable


def install() -> None:
    """Put the process's handler on SIGTERM and SIGINT (main thread only; idempotent).

    A signal the process inherited as ignored (an eval shard's SIGINT) stays ignored.
    """
    if _state.installed or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) != signal.SIG_IGN:
            signal.signal(sig, _handle)
    sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
    _state.installed = True


def requested() -> str | None:
    """Return the name of the signal that asked to stop (`SIGTERM`, `Ctrl-C`), or None."""
    return _state.signal_name


def check(message: str | None = None, hint: str | None = None) -> None:
    """Raise `StopRequested` when a stop was asked for; call it at every safe point.

    Args:
        message, hint: What to say instead of the default sentence (e.g. which step was saved).
    """
    if _state.signal_name is not None:
        raise stop_error(_state.signal_name, message, hint)


def clear() -> None:
    """Forget a recorded request (in-process tests run many commands in one process)."""
    _state.signal_name = None


@contextmanager
def deferred() -> Iterator[None]:
    """Only record stop requests while the body runs (it polls `check()` at its own safe points)."""
    _state.deferred += 1
    try:
        yield
    finally:
        _state.deferred -= 1


@contextmanager
def forwarding(send: Callable[[int], None]) -> Iterator[None]:
    """Pass every stop signal on to a child (`send(signum)`) and wait for it rather than raise (deferred)."""
    _state.forward_to.append(send)
    try:
        with deferred():
            yield
    finally:
        _state.forward_to.remove(send)


def pause_point(name: str) -> None:
    """Test hook: when `DREAM_JOB_PAUSE_AT` names `name`, write its marker and wait for a signal.

    Does nothing otherwise (one environment lookup). Inside `deferred()` it returns once the
    signal is recorded, so the caller reaches its next safe point as it would in a real run.
    """
    names = os.environ.get(PAUSE_AT_ENV)
    if not names or name not in names.split(","):
        return
    marker_dir = Path(os.environ.get(PAUSE_DIR_ENV) or ".")
    marker_dir.mkdir(parents=True, exist_ok=True)
    (marker_dir / name).write_text(str(os.getpid()), encoding="utf-8")
    while _state.signal_name is None:
        time.sleep(0.02)


def boundary(name: str) -> None:
    """A stage boundary: the test hook `pause_point(name)`, then `check()`."""
    pause_point(name)
    check()
