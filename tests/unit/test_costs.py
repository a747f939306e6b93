"""One spend rule: wall-clock since the first start x the machine's price, for the guard and for `status`."""

from __future__ import annotations

from pathlib import Path

from dream_job.costs import CostTracker, spent_yuan


def test_spend_is_hours_since_the_first_start_times_the_price() -> None:
    # 90 minutes at $2.50/h and ¥7.1 per $: 1.5 x 2.5 x 7.1 = ¥26.625.
    assert spent_yuan(1_000.0, 2.5, 7.1, until=1_000.0 + 5_400) == 1.5 * 2.5 * 7.1 == 26.625
    assert spent_yuan(1_000.0, 2.5, 7.1, until=900.0) == 0.0  # a clock behind the start spends nothing


def test_the_budget_guard_counts_the_same_spend(tmp_path: Path) -> None:
    tracker = CostTracker(path=tmp_path / "cost.json", started_at=1_000.0, usd_per_hour=2.5, cny_per_usd=7.1,
                          budget_yuan=30.0, reserve_yuan=3.0)
    assert tracker.spent_yuan(now=6_400.0) == 26.625
    # 26.625 + 3 reserved for evaluation and publishing = 29.625 < 30: go on; 10 minutes later it stops.
    assert not tracker.must_stop(now=6_400.0)
    assert tracker.must_stop(now=7_000.0)  # 1.6667 h x 17.75 = 29.58 + 3 >= 30


def test_the_guard_stops_before_a_step_it_cannot_afford(tmp_path: Path) -> None:
    """Issue 25: asked before each step with the last step's duration, the guard never ends past the budget."""
    # ¥1 budget, ¥0.20 reserved; at $36/h and ¥7.1 per $, a 10 s step costs 36 x 7.1 / 360 = ¥0.71.
    tracker = CostTracker(path=tmp_path / "cost.json", started_at=0.0, usd_per_hour=36.0, cny_per_usd=7.1,
                          budget_yuan=1.0, reserve_yuan=0.2)
    assert tracker.spent_yuan(now=1.0) == 36.0 * 7.1 / 3600 == 0.071
    assert not tracker.must_stop(now=1.0)  # without an estimate of the step: ¥0.071 + 0.2 < 1
    # A 10 s step: 0.071 + 0.71 + 0.2 = ¥0.981 < 1, affordable; an 11 s one: 0.071 + 0.781 + 0.2 = ¥1.052, not.
    assert not tracker.must_stop(now=1.0, next_step_s=10.0)
    assert tracker.must_stop(now=1.0, next_step_s=11.0)
