"""The `dream-job` command line: the typer app, shared options and error rendering.

Verbs live in `dream_job/commands/` (one file per group); each parses, calls one library
function and renders the result. `guarded` turns `DreamJobError` into `error:` / `hint:` and
its exit code, and anything else into a bug report (exit 4) unless `DREAM_JOB_DEBUG=1`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer

from dream_job import errors

app = typer.Typer(
    help="Fine-tune Dream 7B on s1K-1.1: estimate, prepare, train, evaluate, publish.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)



def _check_sets(values: list[str] | None) -> list[str] | None:
    """Refuse a `--set` without `key=value` as a usage error (exit 2), before any file is read."""
    for value in values or []:
        key, sep, _ = value.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"`{value}` is not of the form `a.b.c=value`, e.g. `--set train.epochs=1`")
    return values


# Every verb that works on a job takes its file as the first argument, required: no verb guesses.
SpecArg = Annotated[str, typer.Argument(help="Job file, e.g. `jobs/smoke.yaml`.", metavar="JOB_FILE",
                                        show_default=False)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a spec value: `--set data.max_length=4096` (repeatable).",
                 callback=_check_sets),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
F = TypeVar("F", bound=Callable[..., Any])


def _show_version(value: bool) -> None:
    if value:
        from dream_job import __version__

        print(f"dream-job {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Fine-tune Dream 7B on s1K-1.1: estimate, prepare, train, evaluate, publish."""


def _render_error(exc: errors.DreamJobError) -> None:
    from rich.text import Text

    from dream_job.progress import stderr

    # Text, not markup: messages quote user values that may contain `[...]`.
    stderr.print(Text.assemble(("error:", "bold red"), " ", exc.message), soft_wrap=True)
    for cause in exc.caused_by:
        stderr.print(Text(f"  caused by: {cause}"), soft_wrap=True)
    if exc.hint:
        stderr.print(Text.assemble("\n", ("hint:", "bold"), " ", exc.hint), soft_wrap=True)


def require_container() -> None:
    """Refuse a verb that trains or evaluates in an install without the `container` extra, before any work.

    Raises:
        DreamJobError: Names the first missing package and the install line (exit 1).
    """
    from importlib.util import find_spec

    for name in ("torch", "transformers", "datasets"):
        if find_spec(name) is None:
            failure = errors.known_failure(ModuleNotFoundError(f"No module named '{name}'", name=name))
            assert failure is not None  # each name above is a package of the `container` extra
            raise failure


def guarded(command: F) -> F:
    """Turn `DreamJobError`s into a message and exit code; other errors into a bug report."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from dream_job.progress import setup_logging

        setup_logging()
        try:
            return command(*args, **kwargs)
        except errors.DreamJobError as exc:
            _render_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:
            # `dream-job spec ... | head`: the reader left; say nothing more and keep Python from
            # complaining again when it flushes stdout at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            raise typer.Exit(errors.EXIT_USER) from None
        except (KeyboardInterrupt, Exception) as exc:  # Ctrl-C, a missing extra, a full disk, or a bug
            failure = errors.known_failure(exc)
            if failure is None and os.environ.get("DREAM_JOB_DEBUG") == "1":
                raise
            _render_error(failure or errors.DreamJobError(
                f"unexpected {type(exc).__name__} (a bug in dream-job): {exc}",
                hint="rerun with `DREAM_JOB_DEBUG=1` for the traceback and report it"))
            raise typer.Exit(failure.exit_code if failure else errors.EXIT_BUG) from None

    return wrapper  # type: ignore[return-value]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    finally:
        from dream_job.progress import stderr

        if stderr.is_terminal:
            stderr.show_cursor(True)  # a live view stopped by Ctrl-C may have hidden it


# Registers the verbs on `app`; at the bottom because the command modules import `app` from here.
import dream_job.commands  # noqa: E402,F401
