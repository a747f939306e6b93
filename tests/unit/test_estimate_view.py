"""`dream-job estimate`'s screen at 80 columns: compact by default, `--all` complete, no number cut."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

from rich.console import Console

from budget import Estimate, estimate
from dream_job.progress import estimate_tables
from dream_job.spec import load_spec
from tests.conftest import REPO

REAL = REPO / "jobs" / "dream-s1k.yaml"
LAUNCH = "sky jobs launch -n dream-s1k-20261205-130000 --infra aws/us-east-1 -t p4d.24xlarge sky.yaml"


def run(tmp_path: Path, *overrides: str) -> Estimate:
    # A catalog folder that does not exist: the shipped snapshot, whatever this machine has in ~/.sky.
    return estimate(load_spec(REAL, list(overrides)), data_report=None, catalog_dir=tmp_path / "no-catalog",
                    now=date(2026, 11, 24))


def render(result: Estimate, *, full: bool = False, width: int = 80) -> list[str]:
    console = Console(record=True, width=width, color_system=None)
    for table in estimate_tables(result, full=full, launch_line=LAUNCH, plan_lines=[("guard", "`X=1`")]):
        console.print(table)
    return console.export_text().splitlines()


def row_of(lines: list[str], cost: str) -> str:
    return next(line for line in lines if re.search(rf"\s{re.escape(cost)}\s", line))


def test_compact_shows_the_choice_five_alternatives_and_one_line_per_reason(tmp_path: Path) -> None:
    result = run(tmp_path)
    lines = render(result)
    assert all(len(line) <= 80 for line in lines)
    assert len(lines) < 80  # was 441 lines before: one per rejected family and 20 candidates
    choice = result.choice
    assert choice is not None
    first = row_of(lines, f"{choice.cost_cny:.2f}")
    assert first.split() == [f"{choice.count}x", choice.gpu, choice.method, choice.cloud, "spot",
                             f"{choice.usd_per_hour:.2f}", f"{choice.peak_gib:.1f}/{choice.vram_gib:.0f}",
                             f"{choice.hours:.2f}", f"{choice.cost_cny:.2f}", "◀", "choice"]
    # The five other rows: distinct machines, each either runnable or only a recipe change away.
    start = lines.index(first)
    rows = lines[start + 1:start + 6]
    assert len({tuple(r.split()[:5]) for r in rows}) == 5
    runnable = {f"{c.cost_cny:.2f}" for c in result.candidates
                if c.accepted or (c.fits and c.within_budget and c.reason.startswith("changes the recipe"))}
    assert all(row.split()[-1] == "recipe" or row.split()[-1] in runnable for row in rows)
    assert not lines[start + 6].startswith(("1x", "2x", "4x", "8x"))
    # One line per class, and the counts add up to every candidate that is not accepted.
    text = "\n".join(lines)
    counts = [int(n) for n in re.findall(r"^│\s+(\d+) │", text, flags=re.M)]
    assert sum(counts) == sum(not c.accepted for c in result.candidates)
    assert len(counts) == 5 and counts == sorted(counts, reverse=True)
    for start_of_line in ("not enough GPU memory", "not enough host RAM", "over the ¥100 budget",
                          "runpod, vast: no FUSE", "change the recipe"):
        assert f"│ {start_of_line}" in text
    assert "every candidate: `--all`" in text
    assert "$/h and ¥: the whole machine (all its GPUs)" in text
    # The choice box keeps its rows, the launch line last.
    assert "│ guard       │ `X=1`" in text and "│ launch      │ sky jobs launch" in text
    assert f"${choice.usd_per_hour:.2f}/h for the machine" in text


def test_all_lists_every_fitting_candidate_and_every_rejected_family(tmp_path: Path) -> None:
    result = run(tmp_path)
    lines = render(result, full=True)
    assert all(len(line) <= 80 for line in lines)
    fitting = [c for c in result.candidates if c.fits]
    table_rows = [line for line in lines if re.match(r"^\d+x ", line)]
    assert len(table_rows) == len(fitting)
    for c, line in zip(fitting, table_rows):
        fields = line.split()
        # Whole numbers, never folded or cut with an ellipsis.
        assert fields[fields.index(c.method) + (3 if c.spot else 2):][:4] == [
            f"{c.usd_per_hour:.2f}", f"{c.peak_gib:.1f}/{c.vram_gib:.0f}", f"{c.hours:.2f}", f"{c.cost_cny:.2f}"]
    text = "\n".join(lines)
    assert "…" not in text
    assert "full on 1x A100-80GB" in text and "full_8bit on any GPU" in text


def test_a_large_budget_still_shows_whole_numbers(tmp_path: Path) -> None:
    result = run(tmp_path, "budget.max_cost_yuan=1000")
    for cost in (f"{c.cost_cny:.2f}" for c in result.candidates if c.fits):
        assert len(cost) <= 7  # ¥1000 budget: costs up to 6 digits and a point fit the ¥ column
    lines = render(result, full=True)
    assert all(len(line) <= 80 for line in lines)
    assert "…" not in "\n".join(lines)
