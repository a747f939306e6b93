"""`budget.caps`: the wall-clock cap a budget buys, the shutdown grace it leaves, the budget a run needs.

Every expected value is worked by hand in the comments from the stated inputs (¥, CNY per USD, $/h).
"""

from __future__ import annotations

import pytest

from budget.caps import GRACE_MIN, KILL_AFTER_S, SHUTDOWN_GRACE_S, RunCap, fitting_budget_cny, run_cap


def test_the_grace_is_the_kill_delay_plus_the_last_upload_in_whole_minutes() -> None:
    # SIGTERM -> SIGKILL 600 s (the last checkpoint save), then 300 s for its upload: 900 s = 15 min.
    assert (KILL_AFTER_S, SHUTDOWN_GRACE_S, GRACE_MIN) == (600.0, 900.0, 15)


def test_the_cap_is_what_the_budget_buys_less_the_grace_rounded_down() -> None:
    # ¥100 / 7.10 ¥/$ / $10/h = 1.4085 h = 84.5 min -> 84 whole minutes; less 15: 69 min = 1.15 h.
    # In floats (84 - 15) / 60 * 100 is 114.999..., which would floor to 1.14: the cap is counted in integers.
    assert run_cap(100, cny_per_usd=7.10, usd_per_hour=10.0) == RunCap(hard_limit_min=84, budget_hours=1.15)


def test_a_run_of_exactly_the_cap_fits_and_one_just_above_does_not() -> None:
    cap = run_cap(100, cny_per_usd=7.10, usd_per_hour=10.0)  # 1.15 h, as above
    assert cap.fits(1.15) and cap.fits(1.0)
    assert not cap.fits(1.1501)


def test_a_managed_jobs_cap_counts_its_controller_too() -> None:
    # Lambda 8x A100-80GB $22.32/h + the jobs controller (m6i.xlarge) $0.192/h = $22.512/h = ¥159.8352/h at 7.10:
    # ¥100 buys 37.54 min -> 37; less 15: 22 min = 0.3667 h -> 0.36 h, shorter than the 0.52 h run of issue 24.
    cap = run_cap(100, cny_per_usd=7.10, usd_per_hour=22.32 + 0.192)
    assert cap == RunCap(hard_limit_min=37, budget_hours=0.36)
    assert not cap.fits(0.519)


def test_a_budget_shorter_than_the_grace_leaves_a_negative_cap() -> None:
    # ¥1 / 7.10 / $10/h = 0.85 min -> 0 whole minutes; less 15: -15 min = -0.25 h.
    cap = run_cap(1, cny_per_usd=7.10, usd_per_hour=10.0)
    assert cap == RunCap(hard_limit_min=0, budget_hours=-0.25)
    assert not cap.fits(0.01)


@pytest.mark.parametrize(("hours", "usd_per_hour", "expected"), [
    # 1.15 h needs a 1.15 h cap: 69 + 15 = 84 min; ¥100 buys 84.5 min (above); ¥99 buys 83.66 -> 83 min -> 1.13 h.
    (1.15, 10.0, 100),
    # 1.1501 h needs a 1.16 h cap: 69.6 -> 70 + 15 = 85 min = 85 / 60 x 71 = ¥100.58 -> ¥101 (85.35 min -> 1.16 h).
    (1.1501, 10.0, 101),
    # 0.519 h needs 0.52 h: 31.2 -> 32 + 15 = 47 min x ¥159.8352/h / 60 = ¥125.20 -> ¥126 (47.30 min -> 0.53 h);
    # ¥125 buys 46.92 -> 46 min -> 0.51 h.
    (0.519, 22.32 + 0.192, 126),
])
def test_the_fitting_budget_is_the_smallest_whole_yuan_whose_cap_fits(hours: float, usd_per_hour: float,
                                                                     expected: int) -> None:
    assert fitting_budget_cny(hours, cny_per_usd=7.10, usd_per_hour=usd_per_hour) == expected
    assert run_cap(expected, cny_per_usd=7.10, usd_per_hour=usd_per_hour).fits(hours)
    assert not run_cap(expected - 1, cny_per_usd=7.10, usd_per_hour=usd_per_hour).fits(hours)
