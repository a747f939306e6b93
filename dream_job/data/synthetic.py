"""Deterministic arithmetic word problems in the exact s1K-1.1 schema.

The smoke job and the tests train on these rows: each has a question, a written
step-by-step trace (column addition with carries), a final attempt with the answer and all
s1K-1.1 columns (`solution`, `deepseek_*`, `gemini_*`, grades, `cot_type`, `source_type`,
`metadata` as a Python-repr string). The committed file `jobs/assets/smoke/s1k-smoke.jsonl`
(prose word problems, used by the tests) is this module's output:

    python -m dream_job.data.synthetic jobs/assets/smoke/s1k-smoke.jsonl --rows 300 --seed 0

The smoke job's own rows are one-digit sums with a compact trace (`one_digit_rows`), written
by `python -m dream_job.data.smoke_assets jobs/assets`.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

SOURCE_TYPE = "dream-job/synthetic-addition"
COMPACT_SOURCE_TYPE = "dream-job/synthetic-addition-compact"
ONE_DIGIT_CARRY_SOURCE_TYPE = "dream-job/synthetic-addition-one-digit-carry"
ONE_DIGIT_NO_CARRY_SOURCE_TYPE = "dream-job/synthetic-addition-one-digit-no-carry"
# The questions of `one_digit_rows`; the operands keep their order, so the trace reads them left to right.
PHRASINGS = ("What is {a} + {b}?", "What is {a} plus {b}?", "Add {a} and {b}.", "Compute {a} + {b}.")

_STORIES = (
    ("{name} has {a} marbles and finds {b} more.", "How many marbles does {name} have now?"),
    ("A library holds {a} books and receives {b} new ones.", "How many books does the library hold now?"),
    ("{name} walked {a} meters in the morning and {b} meters in the evening.",
     "How many meters did {name} walk in total?"),
    ("A farm has {a} chickens and buys {b} more.", "How many chickens does the farm have now?"),
    ("{name} saved {a} coins last year and {b} coins this year.", "How many coins has {name} saved?"),
)
_NAMES = ("Ada", "Ben", "Chen", "Dana", "Eli", "Fatima", "Goro", "Hana", "Ivan", "Jia")


def addition_trace(a: int, b: int) -> str:
    """Write the column addition of `a + b` digit by digit, with carries, as a thinking trace."""
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    lines = [f"I need to add {a} and {b}. I will add the digits column by column from the right."]
    carry = 0
    result_digits: list[str] = []
    places = ("ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands")
    for i in range(max(len(digits_a), len(digits_b))):
        da = int(digits_a[i]) if i < len(digits_a) else 0
        db = int(digits_b[i]) if i < len(digits_b) else 0
        total = da + db + carry
        place = places[i] if i < len(places) else f"column {i + 1}"
        carry_text = f" plus carry {carry}" if carry else ""
        lines.append(f"{place}: {da} + {db}{carry_text} = {total}, write {total % 10}, carry {total // 10}.")
        result_digits.append(str(total % 10))
        carry = total // 10
    if carry:
        lines.append(f"The final carry {carry} becomes the leading digit.")
        result_digits.append(str(carry))
    result = "".join(reversed(result_digits))
    lines.append(f"So {a} + {b} = {result}. Check: {result} - {b} = {int(result) - b}, which is {a}. Correct.")
    return "\n".join(lines)


def make_row(index: int, rng: random.Random, max_digits: int = 4) -> dict[str, Any]:
    """Build one s1K-1.1 row: an addition word problem with its trace and answer."""
    a = rng.randint(10, 10**rng.randint(2, max_digits) - 1)
    b = rng.randint(10, 10**rng.randint(2, max_digits) - 1)
    name = rng.choice(_NAMES)
    setup, ask = rng.choice(_STORIES)
    question = f"{setup.format(name=name, a=a, b=b)} {ask.format(name=name)}"
    total = a + b
    trace = addition_trace(a, b)
    attempt = f"Adding the two amounts gives {a} + {b} = {total}.\n\nThe answer is $\\boxed{{{total}}}$."
    return {
        "solution": str(total),
        "question": question,
        "cot_type": "math",
        "source_type": SOURCE_TYPE,
        "metadata": repr({"index": index, "a": a, "b": b}),
        "gemini_thinking_trajectory": trace,
        "gemini_attempt": attempt,
        "deepseek_thinking_trajectory": trace,
        "deepseek_attempt": attempt,
        "gemini_grade": "Yes",
        "gemini_grade_reason": "The attempt matches the reference answer.",
        "deepseek_grade": "Yes",
        "deepseek_grade_reason": "The attempt matches the reference answer.",
    }


def generate_rows(num_rows: int, seed: int = 0, max_digits: int = 4) -> list[dict[str, Any]]:
    """Return `num_rows` rows, identical for the same arguments."""
    rng = random.Random(seed)
    return [make_row(i, rng, max_digits) for i in range(num_rows)]


def compact_addition_trace(a: int, b: int) -> str:
    """Write `a + b` column by column from the right, one fixed-width line per column.

    Each line is `da+db+carry=tt` with the column total as two digits, so the written digit
    is its last digit and the next carry its first; a final carry of 1 leads the answer.
    For 95 + 17: `5+7+0=12`, `9+1+1=11`.
    """
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    lines, carry = [], 0
    for i in range(max(len(digits_a), len(digits_b))):
        da = int(digits_a[i]) if i < len(digits_a) else 0
        db = int(digits_b[i]) if i < len(digits_b) else 0
        total = da + db + carry
        lines.append(f"{da}+{db}+{carry}={total:02d}")
        carry = total // 10
    return "\n".join(lines)


def compact_row(index: int, a: int, b: int, question: str, source_type: str) -> dict[str, Any]:
    """Build one s1K-1.1 row asking `question` about `a + b`, with the compact trace and the bare sum."""
    total = str(a + b)
    trace = compact_addition_trace(a, b)
    return {
        "solution": total,
        "question": question,
        "cot_type": "math",
        "source_type": source_type,
        "metadata": repr({"index": index, "a": a, "b": b}),
        "gemini_thinking_trajectory": trace,
        "gemini_attempt": total,
        "deepseek_thinking_trajectory": trace,
        "deepseek_attempt": total,
        "gemini_grade": "Yes",
        "gemini_grade_reason": "The attempt matches the reference answer.",
        "deepseek_grade": "Yes",
        "deepseek_grade_reason": "The attempt matches the reference answer.",
    }


def one_digit_rows(*, carry: bool) -> list[dict[str, Any]]:
    """Return every sum `a + b` of two one-digit numbers with (`carry`) or without a carry, in
    each of the `PHRASINGS`, in a fixed order: 45 x 4 = 180 rows with a carry, 55 x 4 = 220 without.

    The smoke job's two halves of one task: its base was pre-trained on the sums without a
    carry (below 10) and knows the layout, the copying of the digits and those sums, but not
    what 7 + 8 is; the smoke run fine-tunes it on the sums with a carry. The phrasings give
    each sum several questions, so a held-out question asks a sum that fine-tuning taught
    under another phrasing (one digit has too few pairs to hold whole pairs out).
    """
    pairs = [(a, b) for a in range(10) for b in range(10) if (a + b >= 10) == carry]
    source_type = ONE_DIGIT_CARRY_SOURCE_TYPE if carry else ONE_DIGIT_NO_CARRY_SOURCE_TYPE
    questions = [(a, b, phrasing.format(a=a, b=b)) for a, b in pairs for phrasing in PHRASINGS]
    return [compact_row(i, a, b, question, source_type) for i, (a, b, question) in enumerate(questions)]


def _operand(rng: random.Random, max_digits: int) -> int:
    """Draw a number whose digit count is uniform in 1..max_digits, then uniform among those."""
    num_digits = rng.randint(1, max_digits)
    return rng.randint(0 if num_digits == 1 else 10 ** (num_digits - 1), 10**num_digits - 1)


def generate_compact_rows(num_rows: int, seed: int = 0, max_digits: int = 3) -> list[dict[str, Any]]:
    """Return `num_rows` short addition rows (`What is a + b?`, compact trace), no pair repeated.

    The learning check trains on these: the prompt and the response are short (about 40
    tokens of response for 3 digits), so a small model learns the rule rather than the rows,
    and distinct (a, b) pairs make every held-out question unseen in training.

    Raises:
        ValueError: More rows than half the distinct pairs of `max_digits`-digit numbers.
    """
    if num_rows > 10 ** (2 * max_digits) // 2:
        raise ValueError(f"{num_rows} distinct pairs of numbers below 10**{max_digits} are too many to draw")
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    rows = []
    while len(rows) < num_rows:
        a, b = _operand(rng, max_digits), _operand(rng, max_digits)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        rows.append(compact_row(len(rows), a, b, f"What is {a} + {b}?", COMPACT_SOURCE_TYPE))
    return rows


def write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    """Write rows as JSON lines (sorted keys, UTF-8) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n")


def main() -> None:
    """Command-line entry: write the smoke data set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_jsonl(generate_rows(args.rows, args.seed), args.out)


if __name__ == "__main__":
    main()
