"""The compact addition rows of the learning check: correct sums, fixed-width trace, no repeats."""

from __future__ import annotations

import pytest

from dream_job.data.synthetic import compact_addition_trace, generate_compact_rows


def test_compact_trace_is_one_fixed_width_line_per_column() -> None:
    assert compact_addition_trace(95, 17) == "5+7+0=12\n9+1+1=11"
    assert compact_addition_trace(493, 8) == "3+8+0=11\n9+0+1=10\n4+0+1=05"
    assert compact_addition_trace(0, 0) == "0+0+0=00"


def test_compact_rows_are_distinct_correct_additions_in_the_s1k_schema() -> None:
    rows = generate_compact_rows(500, seed=3, max_digits=2)
    assert rows == generate_compact_rows(500, seed=3, max_digits=2) != generate_compact_rows(500, seed=4, max_digits=2)
    pairs = set()
    for row in rows:
        meta = eval(row["metadata"])  # s1K-1.1 stores metadata as a Python repr
        a, b = meta["a"], meta["b"]
        assert row["question"] == f"What is {a} + {b}?"
        assert row["solution"] == row["deepseek_attempt"] == row["gemini_attempt"] == str(a + b)
        assert row["deepseek_thinking_trajectory"] == compact_addition_trace(a, b)
        assert 0 <= a < 100 and 0 <= b < 100
        pairs.add((a, b))
    assert len(pairs) == 500
    assert {len(str(eval(r["metadata"])["a"])) for r in rows} == {1, 2}


def test_compact_rows_refuse_more_pairs_than_can_be_drawn() -> None:
    with pytest.raises(ValueError, match="too many"):
        generate_compact_rows(5001, max_digits=2)
