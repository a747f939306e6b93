"""The committed smoke assets are exactly what their generator writes."""

from __future__ import annotations

from pathlib import Path

from dream_job.data.smoke_assets import write_smoke_assets
from dream_job.data.synthetic import addition_trace, generate_rows
from tests.conftest import REPO


def test_committed_assets_are_reproducible(tmp_path: Path) -> None:
    write_smoke_assets(tmp_path)
    committed = REPO / "jobs" / "assets"
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated == sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    for relative in generated:
        assert (tmp_path / relative).read_bytes() == (committed / relative).read_bytes(), relative


def test_rows_are_correct_additions_in_the_s1k_schema() -> None:
    rows = generate_rows(50, seed=7)
    assert rows == generate_rows(50, seed=7) != generate_rows(50, seed=8)
    for row in rows:
        meta = eval(row["metadata"])  # s1K-1.1 stores metadata as a Python repr
        assert row["solution"] == str(meta["a"] + meta["b"])
        assert f"\\boxed{{{row['solution']}}}" in row["deepseek_attempt"]
        assert row["deepseek_thinking_trajectory"].endswith("Correct.")


def test_trace_carries() -> None:
    trace = addition_trace(95, 17)
    assert "ones: 5 + 7 = 12, write 2, carry 1." in trace
    assert "tens: 9 + 1 plus carry 1 = 11, write 1, carry 1." in trace
    assert "So 95 + 17 = 112." in trace
