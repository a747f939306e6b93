"""Every environment value the job reads, validated at start-up like a spec field.

The table `VARIABLES` is the one list of the values dream-job itself parses (secrets are only
checked for presence, where they are used). `check_environment()` runs before any verb does its
work (`commands/failures.guarded`), so `DREAM_JOB_USD_PER_HOUR=cheap` is refused in one sentence,
with the fix, before any model is built; readers call `read(name)` for the parsed value.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dream_job.errors import SpecError
from dream_job.rundir import RUN_NAME_RE


@dataclass(frozen=True)
class Variable:
    """One environment value: how to parse it, what is allowed (for the message) and an example."""

    name: str
    parse: Callable[[str], Any]  # raises ValueError when the text is not allowed
    allowed: str
    example: str


def _number_at_least_zero(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(text)
    return value


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text.strip())
        if value < low:
            raise ValueError(text)
        return value
    return parse


def _name(text: str) -> str:
    if not RUN_NAME_RE.fullmatch(text):
        raise ValueError(text)
    return text


def _flag(text: str) -> bool:
    if text not in ("", "0", "1"):
        raise ValueError(text)
    return text == "1"


def _url(text: str) -> str:
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
        raise ValueError(text)
    return text.rstrip("/")


def _port(text: str) -> int:
    value = int(text.strip())
    if not 1 <= value <= 65535:
        raise ValueError(text)
    return value


def _addresses(text: str) -> list[str]:
    if not text.split():
        raise ValueError(text)
    return text.split()


VARIABLES = {v.name: v for v in (
    Variable("DREAM_JOB_USD_PER_HOUR", _number_at_least_zero, "a number ≥ 0 (the machine's price in USD per hour)",
             "2.49"),
    Variable("DREAM_JOB_RUN_ID", _name, "letters, digits, `.`, `_` or `-`", "dream-s1k-20261124-120000"),
    Variable("DREAM_JOB_DEBUG", _flag, "`1` or `0`", "1"),
    Variable("SKYPILOT_NUM_NODES", _int_at_least(1), "an integer ≥ 1", "1"),
    Variable("SKYPILOT_NODE_RANK", _int_at_least(0), "an integer ≥ 0", "0"),
    Variable("SKYPILOT_NODE_IPS", _addresses, "one or more addresses, one per line", "10.0.0.1"),
    Variable("RANK", _int_at_least(0), "an integer ≥ 0 (set by torchrun)", "0"),
    Variable("LOCAL_RANK", _int_at_least(0), "an integer ≥ 0 (set by torchrun)", "0"),
    Variable("WORLD_SIZE", _int_at_least(1), "an integer ≥ 1 (set by torchrun)", "1"),
    Variable("HF_ENDPOINT", _url, "an `http://` or `https://` URL", "https://huggingface.co"),
    # Set by the launch line (sky.yaml, `dream_job.launch`): the task's caps and its torchrun port.
    Variable("BUDGET_HOURS", _number_at_least_zero, "a number of hours ≥ 0 (the wall-clock cap)", "6"),
    Variable("DREAM_JOB_MAX_STARTS", _int_at_least(1), "an integer ≥ 1 (first start plus recoveries)", "10"),
    Variable("DREAM_JOB_MASTER_PORT", _port, "a TCP port, 1 to 65535", "8008"),
)}


def read(name: str) -> Any:
    """Return the parsed value of environment variable `name` (one of `VARIABLES`), or None when unset or empty.

    Raises:
        SpecError: The value is not allowed (see `check_environment`).
    """
    variable = VARIABLES[name]
    text = os.environ.get(name)
    if text is None or (text == "" and name != "DREAM_JOB_DEBUG"):
        return None
    try:
        return variable.parse(text)
    except ValueError:
        raise SpecError(
            f"`{name}` in the environment must be {variable.allowed}, got `{text}`", key=name, value=text,
            hint=f"set it like `export {name}={variable.example}`, or unset it (`unset {name}`)",
        ) from None


def check_environment() -> None:
    """Validate every environment value of `VARIABLES` that is set, before any work.

    Raises:
        SpecError: The first value that is not allowed, named with what is allowed and the fix (exit 1).
    """
    for name in VARIABLES:
        read(name)
