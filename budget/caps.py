"""The wall-clock cap a launch sets from the budget, and the shutdown grace it leaves: one rule for estimate and launch.

A run is paid at its guard price (`budget.catalog.guard_usd_per_hour`), plus its jobs controller's price
for a managed job. `budget.max_cost_yuan` buys `hard_limit_min` whole minutes at that rate (a cluster's
autostop limit). `BUDGET_HOURS`, the cap `dream-job task` enforces, ends `GRACE_MIN` earlier: at the cap
SIGTERM, SIGKILL `KILL_AFTER_S` later (time for the last checkpoint save), then `UPLOAD_GRACE_S` for its
upload. The estimate accepts an offer only when its hours fit that cap (`RunCap.fits`), and the launch
sets the same cap, so an accepted offer is never stopped by its own budget before it ends.

Input: the budget (¥), the exchange rate and the run's price per hour. Output: `RunCap`, and the smallest
whole budget that fits a run of given hours (`fitting_budget_cny`). No torch, no SkyPilot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

KILL_AFTER_S = 600.0
UPLOAD_GRACE_S = 300.0
SHUTDOWN_GRACE_S = KILL_AFTER_S + UPLOAD_GRACE_S
# The grace in whole minutes: `BUDGET_HOURS` ends this long before the hard limit.
GRACE_MIN = math.ceil(SHUTDOWN_GRACE_S / 60)


@dataclass(frozen=True)
class RunCap:
    """The caps a budget sets on a run at one price.

    Attributes:
        hard_limit_min: Whole minutes the budget pays for (a cluster's autostop limit).
        budget_hours: `BUDGET_HOURS`: `hard_limit_min` less `GRACE_MIN`, in hours, rounded down to 0.01 h
            (negative when the budget buys less than the grace).
    """

    hard_limit_min: int
    budget_hours: float

    def fits(self, hours: float) -> bool:
        """Return whether a run of `hours` ends before `BUDGET_HOURS` stops it."""
        return hours <= self.budget_hours


def run_cap(budget_cny: float, *, cny_per_usd: float, usd_per_hour: float) -> RunCap:
    """Return the caps `budget_cny` sets on a run paid `usd_per_hour` (guard price + jobs controller's)."""
    hard_limit_min = math.floor(budget_cny / cny_per_usd / usd_per_hour * 60)
    # Whole hundredths of an hour, in integers: `69 / 60 * 100` is 114.999... in floats.
    return RunCap(hard_limit_min, (hard_limit_min - GRACE_MIN) * 100 // 60 / 100)


def fitting_budget_cny(hours: float, *, cny_per_usd: float, usd_per_hour: float) -> int:
    """Return the smallest whole-yuan budget whose `BUDGET_HOURS` at `usd_per_hour` lets a run of `hours` end."""
    hundredths = math.ceil(round(hours * 100, 6))
    minutes = GRACE_MIN + math.ceil(hundredths * 60 / 100)
    budget = max(1, math.ceil(minutes / 60 * usd_per_hour * cny_per_usd) - 1)
    while not run_cap(budget, cny_per_usd=cny_per_usd, usd_per_hour=usd_per_hour).fits(hours):
        budget += 1
    return budget
