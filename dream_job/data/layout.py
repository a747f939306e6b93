"""Turn one s1K-1.1 row into the texts Dream trains on, in s1's layout.

A row's assistant response is (s1 paper App. D, `simplescaling/s1` `data/tokenization.py`):

    <|im_start|>think\\n{trace.strip()}\\n<|im_start|>answer\\n{attempt.strip()}

with `Answer: ` put before the attempt when it does not already contain "Answer:". The
prompt is the question rendered through the tokenizer's chat template with a generation
prompt; the response is followed by EOS, as Dream's trainer does (not `<|im_end|>`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

THINK_HEADER = "<|im_start|>think\n"
ANSWER_HEADER = "\n<|im_start|>answer\n"


@dataclass(frozen=True)
class RowText:
    """The parts of one well-formed row, stripped and ready to tokenize."""

    question: str
    trace: str
    attempt: str
    solution: str


def trace_columns(trace_source: Literal["deepseek", "gemini"]) -> tuple[str, str]:
    """Return the (thinking trace, final attempt) column names for a trace source."""
    return f"{trace_source}_thinking_trajectory", f"{trace_source}_attempt"


def required_columns(trace_source: Literal["deepseek", "gemini"]) -> tuple[str, ...]:
    """Return the columns a dataset must have for this trace source."""
    return ("question", "solution", *trace_columns(trace_source))


def _as_text(value: Any, column: str) -> tuple[str | None, str]:
    """Return (text, "") for a usable value, else (None, reason). Accepts a one-element list."""
    if isinstance(value, list):
        if len(value) != 1:
            return None, f"`{column}` is a list of {len(value)} items, expected 1"
        value = value[0]
    if value is None:
        return None, f"`{column}` is missing"
    if not isinstance(value, str):
        return None, f"`{column}` is not text"
    if not value.strip():
        return None, f"`{column}` is empty"
    return value.strip(), ""


def read_row(row: dict[str, Any], trace_source: Literal["deepseek", "gemini"]) -> tuple[RowText | None, str]:
    """Validate one dataset row and extract its texts.

    Returns:
        `(RowText, "")` for a usable row, or `(None, reason)` naming the first bad column.
    """
    trace_col, attempt_col = trace_columns(trace_source)
    texts: dict[str, str] = {}
    for column in ("question", trace_col, attempt_col, "solution"):
        text, reason = _as_text(row.get(column), column)
        if text is None:
            return None, reason
        texts[column] = text
    return RowText(texts["question"], texts[trace_col], texts[attempt_col], texts["solution"]), ""


def answer_text(attempt: str) -> str:
    """Return the answer section body: the attempt, prefixed `Answer: ` unless it has one."""
    return attempt if "Answer:" in attempt else f"Answer: {attempt}"


def prompt_messages(question: str, system_prompt: str | None) -> list[dict[str, str]]:
    """Return the chat messages of the prompt; no system message lets the template add its default."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    return [*messages, {"role": "user", "content": question}]


def response_text(trace: str, attempt: str) -> str:
    """Return the whole assistant response (without EOS) in s1's layout."""
    return THINK_HEADER + trace + ANSWER_HEADER + answer_text(attempt)
