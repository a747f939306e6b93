"""Spend of a run and the in-job budget guard.

`<run_dir>/cost.json` holds when the run first started, the machine's hourly price (from
`DREAM_JOB_USD_PER_HOUR`, set by the launcher, or `budget.usd_per_hour`), the budget, and,
when the guard stopped training early, why. Spend is wall-clock time since the first start x
price, so time lost to preemptions and re-provisioning counts too (conservative).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from dream_job.environment import read as read_env
from dream_job.errors import InputError
from dream_job.rundir import COST_NAME, read_json, write_json_atomically
from dream_job.spec import JobSpec

PRICE_ENV = "DREAM_JOB_USD_PER_HOUR"


def spent_yuan(started_at: float, usd_per_hour: float, cny_per_usd: float, *, until: float | None = None) -> float:
    """Return a run's spend: wall-clock from its first start to `until` (default now) x the machine's price.

    The one spend rule: the in-job guard (`CostTracker`) and `dream-job status` of a launch both use it.
    """
    hours = max(0.0, (until or time.time()) - started_at) / 3600
    return hours * usd_per_hour * cny_per_usd


@dataclass(frozen=True)
class CostTracker:
    """The run's price and budget, and the time it first started."""

    path: Path
    started_at: float
    usd_per_hour: float
    cny_per_usd: float
    budget_yuan: float
    reserve_yuan: float

    def spent_yuan(self, now: float | None = None) -> float:
        """Return what the run has cost so far."""
        return spent_yuan(self.started_at, self.usd_per_hour, self.cny_per_usd, until=now)

    def must_stop(self, now: float | None = None, *, next_step_s: float = 0.0) -> bool:
        """True when what is left would not cover the next step plus evaluation, publishing and the margin.

        Asked before each step with the last step's duration as `next_step_s`, so the guard stops
        before the step it cannot afford rather than report a spend past the budget after it.
        """
        next_step_yuan = max(next_step_s, 0.0) / 3600 * self.usd_per_hour * self.cny_per_usd
        return self.usd_per_hour > 0 and (
            self.spent_yuan(now) + next_step_yuan + self.reserve_yuan >= self.budget_yuan)

    def record_stop(self, step: int, total_steps: int) -> str:
        """Write why training stopped early into `cost.json` and return that sentence."""
        reason = (f"training stopped early at step {step} of {total_steps}: spent ¥{self.spent_yuan():.2f} of "
                  f"¥{self.budget_yuan:.2f}, keeping ¥{self.reserve_yuan:.2f} for evaluation and publishing")
        body = _read(self.path)
        body["stopped_early"] = reason
        _write(self.path, body)
        return reason


    def clear_stop(self) -> None:
        """Forget an earlier early stop (training has since run to its end, e.g. with a larger budget)."""
        body = _read(self.path)
        if body.pop("stopped_early", None) is not None:
            _write(self.path, body)


def _read(path: Path) -> dict:
    """Read `cost.json` through the run dir's validated reader (a damaged one is named with its fix)."""
    body = read_json(path, fix=f"delete `{path}` to start the budget clock again from now (spend before it is "
                               "then not counted), or restore it from a copy")
    if not isinstance(body.get("started_at"), (int, float)) or isinstance(body.get("started_at"), bool):
        raise InputError(f"`{path}` is damaged: `started_at` is not a time", path=path,
                         hint=f"delete `{path}` to start the budget clock again from now")
    return body


def _write(path: Path, body: dict) -> None:
    write_json_atomically(path, body)


def open_costs(spec: JobSpec) -> CostTracker:
    """Read (or start) the run's `cost.json`; the first start time survives restarts and recoveries."""
    path = spec.run_dir() / COST_NAME
    body = _read(path) if path.is_file() else {"started_at": time.time()}
    env_price = read_env(PRICE_ENV)  # validated at start-up (`dream_job.environment`)
    usd_per_hour = env_price if env_price is not None else (spec.budget.usd_per_hour or 0.0)
    body.update(usd_per_hour=usd_per_hour, budget_yuan=spec.budget.max_cost_yuan, cny_per_usd=spec.budget.cny_per_usd)
    _write(path, body)
    return CostTracker(path=path, started_at=body["started_at"], usd_per_hour=usd_per_hour,
                       cny_per_usd=spec.budget.cny_per_usd, budget_yuan=spec.budget.max_cost_yuan,
                       reserve_yuan=spec.budget.reserve_fraction * spec.budget.max_cost_yuan)


def stopped_early(run_dir: Path) -> str | None:
    """Return why the guard stopped training early, or None."""
    path = run_dir / COST_NAME
    return _read(path).get("stopped_early") if path.is_file() else None
