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
