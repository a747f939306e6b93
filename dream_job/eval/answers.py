"""Build evaluation prompts in the training layout; extract and check answers. Pure functions.

Prompt: the question through the chat template with the same system prompt as training
(`data.system_prompt`), then, with `eval.prefill_think`, the `<|im_start|>think\\n` header that
opens every training response (s1's inference prompt ends with it, data-and-eval.md §2).

Extraction from the decoded output, in order: the text after the last `<|im_start|>answer` when
there is one (then the whole output); in it the last `\\boxed{...}` (nested braces), else the
last `Answer:` line (s1's regex; also "answer is X"), else the last number.

Checking: math-verify's `verify(parse(gold), parse(pred))` — gold first, the order matters for
sets and intervals (data-and-eval.md §10) — with its SIGALRM timeouts off (`parsing_timeout=None`,
`timeout_seconds=None`), since SIGALRM only works in the main thread and evaluation may run
elsewhere. Instead, a prediction longer than `MAX_VERIFY_CHARS` is not handed to sympy. Text
without a math environment is wrapped in `$...$` so that LaTeX like `\\frac12` is parsed.
When math-verify says no, normalised strings and plain numbers are compared as a fallback.
"""

from __future__ import annotations

import logging
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from dream_job.data.encode import encode_prompt
from dream_job.data.layout import THINK_HEADER

logger = logging.getLogger(__name__)

ANSWER_MARKER = "<|im_start|>answer"
# Special tokens that end the answer section (decoded with `skip_special_tokens=False`).
STOP_MARKERS = ("<|im_end|>", "<|endoftext|>", "<|im_start|>")
# Longer predictions skip math-verify: without its timeout, sympy could hang on them.
MAX_VERIFY_CHARS = 1000

# s1's extraction regex `Answer\s*:\s*(.*)` (data-and-eval.md §6), plus "the (final) answer is X".
_ANSWER_LINE = re.compile(r"(?i)answer\s*(?::|\bis\b)\s*(.*)")
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
_BOXED = re.compile(r"\\(?:boxed|fbox)")
_MATH_DELIMITER = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed")
_TEXT_COMMAND = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def build_prompt(tokenizer: Any, question: str, *, system_prompt: str | None, prefill_think: bool) -> list[int]:
    """Return the prompt ids: chat template + generation prompt, then the think header if asked.

    The header is tokenized on its own, exactly as `encode_row` tokenizes it in training.
    """
    ids = encode_prompt(tokenizer, question, system_prompt)
    if prefill_think:
        ids += list(tokenizer(THINK_HEADER, add_special_tokens=False)["input_ids"])
    return ids


def answer_section(output: str) -> str | None:
    """Return the text after the last `<|im_start|>answer` up to the next special token, or None."""
    start = output.rfind(ANSWER_MARKER)
    if start < 0:
        return None
    section = output[start + len(ANSWER_MARKER) :]
    ends = [i for marker in STOP_MARKERS if (i := section.find(marker)) >= 0]
    return section[: min(ends)] if ends else section


def last_boxed(text: str) -> str | None:
    """Return the content of the last complete `\\boxed{...}` (or `\\fbox{...}`), braces balanced.

    `\\{` and `\\}` are literal braces and do not count. `\\boxed 5` (no braces) gives `5`.
    """
    for match in reversed(list(_BOXED.finditer(text))):
        after = text[match.end() :]
        rest = after.lstrip()
        if not rest.startswith("{"):
            if after[:1].isspace() and rest:  # `\boxed 5`
                return rest.split()[0].rstrip("$.")
            continue  # `\boxedfoo` is another command
        depth, i = 0, 0
        while i < len(rest):
            char = rest[i]
            if char == "\\":
                i += 2
                continue
            depth += (char == "{") - (char == "}")
            if depth == 0:
                return rest[1:i].strip()
            i += 1
    return None


def answer_line(text: str) -> str | None:
    """Return what follows the last `Answer:` or `answer is` (any case) on its line, or None when empty."""
    matches = _ANSWER_LINE.findall(text)
    found = matches[-1].strip().rstrip(".").strip() if matches else ""
    return found or None


def last_number(text: str) -> str | None:
    """Return the last number in `text`, thousands separators removed, or None."""
    matches = _NUMBER.findall(text)
    return matches[-1].replace(",", "") if matches else None


def extract_answer(output: str) -> str | None:
    """Return the model's final answer from its decoded output, or None when it gave none.

    The answer section (after `<|im_start|>answer`) is searched first, then the whole output;
    in each: the last `\\boxed{}`, else the last `Answer:`/`answer is` line, else the last number.
    """
    section = answer_section(output)
    for text in (output,) if section is None else (section, output):
        found = last_boxed(text) or answer_line(text) or last_number(text)
        if found is not None:
            return found
    return None


def gold_answer(gold: str) -> str:
    """Return the part of a gold answer to compare: its last `\\boxed{}` content, else all of it."""
    return last_boxed(gold) or gold.strip()


def as_math(text: str) -> str:
    """Return `text` wrapped in `$...$` unless it already holds a math environment."""
    text = text.strip().replace("\u2212", "-")  # a Unicode minus is not parsed
    return text if _MATH_DELIMITER.search(text) else f"${text}$"


def normalize_answer(text: str) -> str:
    """Return a canonical string: no `$`, `\\text{}` wrappers, spaces, thousands commas, final period."""
    text = text.strip().replace("\u2212", "-")
    for _ in range(3):  # nested \text{\textbf{...}}
        text = _TEXT_COMMAND.sub(r"\1", text)
    text = text.replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\,", "").replace("\\ ", "")
    text = _THOUSANDS.sub("", "".join(text.split()))
    return text.rstrip(".").lower()


def _as_number(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def _math_verify(gold: str, pred: str) -> bool:
    from math_verify import parse, verify

    gold_parsed = parse(as_math(gold), parsing_timeout=None)
    pred_parsed = parse(as_math(pred), parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))  # gold first


def check_answer(gold: str, pred: str | None) -> bool:
    """Return whether the extracted prediction matches the gold answer.

    Args:
        gold: The suite's gold answer (a short answer, or a worked solution with `\\boxed{}`).
        pred: The output of `extract_answer`; None counts as wrong.
    """
    if pred is None or not pred.strip():
        return False
    gold = gold_answer(gold)
    if len(pred) <= MAX_VERIFY_CHARS:
        try:
            if _math_verify(gold, pred):
                return True
        except Exception as exc:  # math-verify/sympy failures on odd input mean "not verified"
            logger.debug("math-verify failed on gold %r, pred %r: %s", gold, pred, exc)
    gold_norm, pred_norm = normalize_answer(gold), normalize_answer(pred)
    if gold_norm == pred_norm:
        return True
    gold_number, pred_number = _as_number(gold_norm), _as_number(pred_norm)
    return gold_number is not None and pred_number is not None and gold_number == pred_number
