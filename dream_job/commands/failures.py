"""Where errors become text: `guarded` renders a `DreamJobError` as one block and exits with its code.

Every verb is wrapped in `guarded`. A `DreamJobError` prints as `error: <sentence>`, then its
`key`, `path`, `value` and `caused by` lines aligned under it, a blank line and `hint:`; Ctrl-C, a
missing extra and a full disk become such errors too (`known_failure`); anything else is a bug
(exit 4), with the traceback only under `DREAM_JOB_DEBUG=1`.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer

from dream_job import errors
from dream_job.environment import check_environment

F = TypeVar("F", bound=Callable[..., Any])

# Packages of the `container` extra: without them a laptop install can estimate, launch and pull only.
CONTAINER_MODULES = frozenset({"torch", "datasets", "transformers", "tokenizers", "safetensors", "peft", "torchao",
                               "boto3", "math_verify", "pyarrow", "huggingface_hub", "botocore"})


def error_lines(exc: errors.DreamJobError) -> list[str]:
    """Return the lines that show `exc`: `error:`, the aligned field rows, then a blank line and `hint:`."""
    rows = [(label, value) for label, value in (("key", exc.key), ("path", exc.path)) if value is not None]
    if exc.value is not None:
        shown = exc.value if isinstance(exc.value, str) else json.dumps(exc.value, default=str)
        rows.append(("value", shown))
    rows += [("caused by", cause) for cause in exc.caused_by]
    width = max((len(label) for label, _ in rows), default=0) + 1
    lines = [f"error: {exc.message}", *(f"  {label + ':':<{width}} {value}" for label, value in rows)]
    return [*lines, "", f"hint: {exc.hint}"] if exc.hint else lines


def render_error(exc: errors.DreamJobError) -> None:
    """Print `exc` to stderr as `error_lines` does, `error:` and `hint:` in bold when colour is on."""
    from rich.text import Text

    from dream_job.progress import stderr

    for line in error_lines(exc):
        # Text, not markup: messages quote user values that may contain `[...]`.
        label, sep, rest = line.partition(": ")
        if label in ("error", "hint") and sep:
            stderr.print(Text.assemble((f"{label}:", "bold red" if label == "error" else "bold"), " ", rest),
                         soft_wrap=True)
        else:
            stderr.print(Text(line), soft_wrap=True)


def known_failure(exc: BaseException) -> errors.DreamJobError | None:
    """Turn Ctrl-C or an environment failure (missing extra, full disk) into a user-facing error, else None.

    Ctrl-C counts also when a library raised something else while unwinding from it (`datasets`'
    process pool turns it into a `TimeoutError`).
    """
    from dream_job import stopping
    from dream_job.rundir import disk_full_path, is_disk_full, os_error

    current: BaseException | None = exc
    for _ in range(10):
        if isinstance(current, stopping.StopRequested) and current is not exc:
            return current  # a stop a library wrapped while unwinding from it
        if isinstance(current, KeyboardInterrupt):
            return errors.Interrupted("interrupted by Ctrl-C; work finished so far is kept",
                                      hint="run the same command again to continue")
        if current is None:
            break
        current = current.__context__
    if (signal_name := stopping.requested()) is not None:
        return stopping.stop_error(signal_name)  # whatever a library made of the stop, it was one

    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in CONTAINER_MODULES:
        return errors.InputError(
            f"this command needs the package `{exc.name}`, which this install of dream-job lacks",
            hint="install the `container` extra: in the repo, `make setup` (CPU torch), or install torch, then "
                 "`pip install -e '.[container]'` (or run it in the dream-job image); a laptop install estimates, "
                 "launches and pulls",
        )
    if is_disk_full(exc):
        where = disk_full_path(exc)  # the file it names, else what was being written (`rundir.writing_to`)
        return os_error(OSError(28, "No space left on device"), where or Path.cwd())
    return None


def require_container() -> None:
    """Refuse a verb that trains or evaluates in an install without the `container` extra, before any work.

    Raises:
        InputError: Names the first missing package and the install line (exit 1).
    """
    from importlib.util import find_spec

    for name in ("torch", "transformers", "datasets"):
        if find_spec(name) is None:
            failure = known_failure(ModuleNotFoundError(f"No module named '{name}'", name=name))
            assert failure is not None  # each name above is a package of the `container` extra
            raise failure


def guarded(command: F) -> F:
    """Wrap a verb: turn `DreamJobError`s into a message and exit code; other errors into a bug report."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from dream_job import stopping
        from dream_job.progress import setup_logging

        setup_logging()
        try:
            check_environment()  # every value the job reads, before any work
            return command(*args, **kwargs)
        except errors.DreamJobError as exc:
            render_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:
            # `dream-job spec ... | head`: the reader left; say nothing more and keep Python from
            # complaining again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            raise typer.Exit(errors.EXIT_USER) from None
        except (KeyboardInterrupt, Exception) as exc:  # Ctrl-C, a missing extra, a full disk, or a bug
            failure = known_failure(exc)
            if failure is None and os.environ.get("DREAM_JOB_DEBUG") == "1":
                raise
            failure = failure or errors.InternalError(
                f"unexpected {type(exc).__name__} (a bug in dream-job): {exc}",
                hint="rerun with `DREAM_JOB_DEBUG=1` for the traceback and report it")
            render_error(failure)
            if isinstance(failure, (errors.Interrupted, stopping.StopRequested)):
                _forget_unhandled_keyboard_interrupt()
            raise typer.Exit(failure.exit_code) from None

    return wrapper


def _forget_unhandled_keyboard_interrupt() -> None:
    """Keep exit 130 after a handled Ctrl-C.

    When the KeyboardInterrupt first left code that a C extension ran through `PyRun_*`, CPython
    3.11 marks it "unhandled" and, although we handled it, ends the process by SIGINT after exit
    (seen as -2 by a parent, about 1 run in 4 of an interrupted prep). Any `PyRun_*` call resets
    that mark.
    """
    import ctypes

    ctypes.pythonapi.PyRun_SimpleString(b"pass")  # type: ignore[return-value]
