"""Errors a user can cause, with the fields the CLI needs to render them.

Library code raises these; only `dream_job.cli` turns them into text and an exit code.
Each carries one sentence (`message`), optional `caused_by` lines and an optional `hint`
with the fix, so every failure ends in a clear message instead of a traceback.
"""

from __future__ import annotations

# Exit codes (style.md rule 5): 1 the user must act, 2 CLI usage (click's own),
# 3 transient and safe to retry, 4 a bug in dream-job.
EXIT_USER = 1
EXIT_USAGE = 2
EXIT_TRANSIENT = 3
EXIT_BUG = 4


class DreamJobError(Exception):
    """Base class: a failure the user can act on.

    Args:
        message: One sentence naming the thing that failed (key path, file) and why.
        hint: The fix, ideally a command to run.
        caused_by: Lower-level causes, one line each.
        exit_code: Process exit code the CLI uses.
    """

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        caused_by: list[str] | None = None,
        exit_code: int = EXIT_USER,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.caused_by = caused_by or []
        self.exit_code = exit_code


class SpecError(DreamJobError):
    """The job spec (YAML file or a `--set` override) is invalid."""


class DataError(DreamJobError):
    """The dataset or tokenizer cannot be read or does not have the expected shape."""


class BudgetError(DreamJobError):
    """No offer fits the job within its budget."""


class CheckpointError(DreamJobError):
    """A checkpoint is missing, torn or incompatible with the run."""


class ArtifactError(DreamJobError):
    """An artifact destination cannot be read or written."""


# Exit code after Ctrl-C (128 + SIGINT), as shells report it; the work done so far is kept.
EXIT_INTERRUPTED = 130


class DiskFullError(DreamJobError):
    """A write failed because the disk is full; its temp files were removed."""


class RunDirBusyError(DreamJobError):
    """Another process holds the run directory's lock."""


# Packages of the `container` extra: without them a laptop install can estimate, launch and pull only.
_CONTAINER_MODULES = {"torch", "datasets", "transformers", "tokenizers", "safetensors", "peft", "torchao", "boto3",
                      "math_verify", "pyarrow", "huggingface_hub", "botocore"}


def known_failure(exc: BaseException) -> DreamJobError | None:
    """Turn Ctrl-C or an environment failure (missing extra, full disk) into a user-facing error, else None.

    Ctrl-C counts also when a library raised something else while unwinding from it (`datasets`'
    process pool turns it into a `TimeoutError`).
    """
    from pathlib import Path

    from dream_job.rundir import is_disk_full, os_error  # rundir imports this module

    current: BaseException | None = exc
    for _ in range(10):
        if isinstance(current, KeyboardInterrupt):
            return DreamJobError("interrupted by Ctrl-C; work finished so far is kept",
                                 hint="run the same command again to continue", exit_code=EXIT_INTERRUPTED)
        if current is None:
            break
        current = current.__context__

    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in _CONTAINER_MODULES:
        return DreamJobError(
            f"this command needs the package `{exc.name}`, which this install of dream-job lacks",
            hint="install the `container` extra: in the repo, `make setup` (CPU torch), or install torch, then "
                 "`pip install -e '.[container]'` (or run it in the dream-job image); a laptop install estimates, "
                 "launches and pulls",
        )
    if is_disk_full(exc):
        where = getattr(exc, "filename", None) or "the run dir"
        return os_error(OSError(28, "No space left on device"), Path(where))
    return None
