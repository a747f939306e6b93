"""Tokenize a row in s1's layout and fit it into `data.max_length`.

The response is tokenized in three segments so that `keep_answer` can shorten the trace
exactly and the report can count each part:

    prompt  = chat template(question) with generation prompt
    trace   = "<|im_start|>think\\n" + trace
    answer  = "\\n<|im_start|>answer\\n" + attempt (with the "Answer:" rule) + EOS

Segments are tokenized separately, so at the trace/answer boundary a punctuation mark and
the newline may be two tokens where tokenizing the text in one go would merge them (Qwen's
".\n"); the decoded text is identical, and the trainer and sampler only ever see this form.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from dream_job.data.layout import ANSWER_HEADER, THINK_HEADER, answer_text, prompt_messages

Truncation = Literal["right", "drop", "keep_answer"]

KEPT = "kept"
PROMPT_TOO_LONG = "prompt longer than `data.max_length`"
OVER_MAX_LENGTH = "over `data.max_length`"
ANSWER_TOO_LONG = "prompt and answer alone over `data.max_length`"


@dataclass(frozen=True)
class EncodedRow:
    """Token ids of one row after truncation, and its part lengths before truncation."""

    input_ids: list[int]
    prompt_length: int
    prompt_tokens: int
    trace_tokens: int
    answer_tokens: int
    truncated: bool
    status: str  # KEPT, or why the row is skipped / dropped

    @property
    def total_tokens(self) -> int:
        """Length before truncation."""
        return self.prompt_tokens + self.trace_tokens + self.answer_tokens


def encode_prompt(tokenizer: Any, question: str, system_prompt: str | None) -> list[int]:
    """Return the prompt ids: the chat template with a generation prompt, no extra specials."""
    text = tokenizer.apply_chat_template(
        prompt_messages(question, system_prompt), tokenize=False, add_generation_prompt=True
    )
    return _ids(tokenizer, text)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_row(
    tokenizer: Any,
    question: str,
    trace: str,
    attempt: str,
    *,
    system_prompt: str | None,
    max_length: int,
    truncation: Truncation,
    marker: str,
) -> EncodedRow:
    """Tokenize one row and apply the truncation policy.

    Args:
        tokenizer: A transformers tokenizer with a chat template and EOS.
        question, trace, attempt: Stripped row texts.
        system_prompt: System message, or None for the template's default.
        max_length: Maximum sequence length in tokens.
        truncation: `right` keeps the first `max_length` tokens; `drop` marks over-length rows
            dropped; `keep_answer` keeps the start of the trace, then `marker`, then the whole
            answer and EOS.
        marker: Text inserted where `keep_answer` cut the trace.

    Returns:
        The encoded row; `status` is `KEPT` or the reason it is not used.
    """
    prompt = encode_prompt(tokenizer, question, system_prompt)
    header = _ids(tokenizer, THINK_HEADER)
    trace_ids = _ids(tokenizer, trace)
    answer = _ids(tokenizer, ANSWER_HEADER + answer_text(attempt)) + [tokenizer.eos_token_id]
    sizes = {"prompt_tokens": len(prompt), "trace_tokens": len(header) + len(trace_ids), "answer_tokens": len(answer)}
    full = prompt + header + trace_ids + answer

    def row(ids: list[int], status: str = KEPT, truncated: bool = False) -> EncodedRow:
        return EncodedRow(ids, len(prompt), truncated=truncated, status=status, **sizes)

    if len(prompt) >= max_length:  # not even one response token would fit
        return row([], PROMPT_TOO_LONG)
    if len(full) <= max_length:
        return row(full)
    if truncation == "drop":
        return row([], OVER_MAX_LENGTH)
    if truncation == "right":
        return row(full[:max_length], truncated=True)
    marker_ids = _ids(tokenizer, marker)
    budget = max_length - len(prompt) - len(header) - len(marker_ids) - len(answer)
    if budget < 0:
        return row([], ANSWER_TOO_LONG)
    return row(prompt + header + trace_ids[:budget] + marker_ids + answer, truncated=True)
