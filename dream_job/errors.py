"""Errors a user can cause, with the fields the CLI needs to render them.

Library code raises these; only the CLI (`dream_job/commands/failures.py`) turns them into text
and an exit code. Each carries one sentence (`message`) naming the thing that failed, and where
known the spec `key`, the file `path`, the `value` got, `caused_by` lines and a `hint` with the fix.

The subclasses say what the user must do, and so the exit code (style.md rule 5):

    DreamJobError            1  act on the message (base class; raise a subclass)
    ├── SpecError            1  fix the job file or a `--set`
    ├── UsageError           2  fix the command line
    ├── InputError           1  fix or replace a file, folder or machine the job uses
    │   ├── DataError            the dataset or tokenizer
    │   ├── CheckpointError      a checkpoint or weights folder
    │   ├── ArtifactError        a destination or a published model
    │   └── DiskFullError        the disk (temp files were removed)
    ├── BudgetError          1  no offer fits the budget
    ├── RunDirBusyError      1  wait for the other process holding the run dir
    ├── StageError           1  read the log of the stage's child process (its exit code when 1, 3, 4 or 130)
    ├── TransientError       3  run the same command again (network, preemption)
    ├── Interrupted        130  stopped by Ctrl-C; run the same command again to continue
    └── InternalError        4  a bug in dream-job (the CLI wraps unexpected exceptions; code raises it
                                  only where one of its own invariants fails)

An error whose kind depends on the moment (an upload that failed on a flaky network is an
`ArtifactError` but retrying helps) passes `exit_code=EXIT_TRANSIENT`.
"""

from __future__ import annotations

from pathlib import Path

# Exit codes (style.md rule 5): 1 the user must act, 2 CLI usage (click's own),
# 3 transient and safe to retry, 4 a bug in dream-job.
EXIT_USER = 1
EXIT_USAGE = 2
EXIT_TRANSIENT = 3
EXIT_BUG = 4
# Exit code after Ctrl-C (128 + SIGINT), as shells report it; the work done so far is kept.
EXIT_INTERRUPTED = 130


class DreamJobError(Exception):
    """Base class: a failure the user can act on.

    Args:
        message: One sentence naming the thing that failed (key path, file) and why.
        key: The spec key path involved, e.g. `train.micro_batch_size`.
        path: The file or folder involved, optionally with `:line`.
        value: The value got (never a secret).
        hint: The fix, ideally a command to run.
        caused_by: Lower-level causes, one line each.
        exit_code: Process exit code the CLI uses; defaults to the class's.
    """

    exit_code: int = EXIT_USER

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        path: str | Path | None = None,
        value: object = None,
        hint: str | None = None,
        caused_by: list[str] | None = None,
        exit_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.path = path
        self.value = value
        self.hint = hint
        self.caused_by = list(caused_by or [])
        if exit_code is not None:
            self.exit_code = exit_code


class SpecError(DreamJobError):
    """The job spec (YAML file or a `--set` override) is invalid or does not fit this machine."""


class UsageError(DreamJobError):
    """The command line is wrong in a way click cannot see (exit 2, as click's own usage errors)."""

    exit_code = EXIT_USAGE


class InputError(DreamJobError):
    """A file, folder or machine the job uses is missing or unusable."""


class DataError(InputError):
    """The dataset or tokenizer cannot be read or does not have the expected shape."""


class CheckpointError(InputError):
    """A checkpoint is missing, torn or incompatible with the run."""


class ArtifactError(InputError):
    """An artifact destination cannot be read or written."""


class DiskFullError(InputError):
    """A write failed because the disk is full; its temp files were removed."""


class BudgetError(DreamJobError):
    """No offer fits the job within its budget."""


class RunDirBusyError(DreamJobError):
    """Another process holds the run directory's lock."""


class StageError(DreamJobError):
    """A stage run in child processes (training under torchrun, evaluation shards) failed; its log above says why."""


def child_exit_code(returncode: int) -> int:
    """Return the exit code that reports a failed child process: its own when it means something, else 1."""
    return returncode if returncode in (EXIT_USER, EXIT_TRANSIENT, EXIT_BUG, EXIT_INTERRUPTED) else EXIT_USER


class TransientError(DreamJobError):
    """A failure that may pass: the network, the hub, a preempted machine; safe to retry (exit 3)."""

    exit_code = EXIT_TRANSIENT


class Interrupted(DreamJobError):
    """Stopped by Ctrl-C; the work finished so far is kept (exit 130, as shells report SIGINT)."""

    exit_code = EXIT_INTERRUPTED


class InternalError(DreamJobError):
    """An unexpected exception, i.e. a bug in dream-job; the CLI reports it as one (exit 4)."""

    exit_code = EXIT_BUG
