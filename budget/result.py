"""What an estimate returns: priced candidates and the choice (the launch line is `dream_job.launch`'s).

`Estimate.to_json()` is the stable machine-readable form of `dream-job estimate --json`:
`{choice, candidates, budget_cny, prices_source, prices_date, ...}`; `choice` is null or holds
`gpu, count, method, cloud, spot, peak_gib, hours, cost_cny, usd_per_hour` (+ `accelerator`,
`instance_type`, `region`, `zone`, `priced_on`), each candidate those fields plus `fits,
within_budget, reason` and the details behind them (overheads by part, in hours; `budget_hours`, the
launch's cap on it, and `min_budget_cny`, the smallest budget whose cap it fits).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from budget.controller import ControllerOffer
from dream_job.errors import BudgetError

CHOICE_KEYS = ("gpu", "count", "method", "cloud", "spot", "peak_gib", "hours", "cost_cny", "usd_per_hour",
               "guard_usd_per_hour",
               "accelerator", "instance_type", "region", "zone", "priced_on")


@dataclass(frozen=True)
class Candidate:
    """One priced way to run the job."""

    gpu: str
    accelerator: str
    count: int
    method: str
    cloud: str
    instance_type: str
    region: str
    zone: str | None
    spot: bool
    usd_per_hour: float
    max_usd_per_hour_in_region: float
    guard_usd_per_hour: float  # what the run is budgeted at: see `budget.catalog.guard_usd_per_hour`
    priced_on: date
    peak_gib: float
    vram_gib: float
    host_gib: float
    host_mem_gib: float | None
    hours: float
    train_hours: float
    eval_hours: float
    overhead_hours: float
    overheads_hours: dict[str, float]
    cost_cny: float
    controller_cny: float
    mfu: float
    mfu_measured: bool
    fits: bool
    within_budget: bool
    recipe_change: bool
    reason: str
    save_every_steps: int = 0  # `train.save_every_steps` on this offer (`auto` resolved; `budget.checkpoints`)
    saves: int = 0  # checkpoint saves of the run, the last step's included
    budget_hours: float = 0.0  # `BUDGET_HOURS` the launch sets on this offer (`budget.caps.run_cap`)
    min_budget_cny: int = 0  # the smallest whole budget whose `BUDGET_HOURS` lets it end (`budget.caps`)

    @property
    def accepted(self) -> bool:
        return self.fits and self.within_budget and not self.reason

    def to_json(self) -> dict[str, Any]:
        """Return the candidate as JSON-ready values (numbers rounded for reading)."""
        out = asdict(self)
        for key, digits in (("peak_gib", 2), ("vram_gib", 2), ("host_gib", 1), ("hours", 3), ("train_hours", 3),
                            ("eval_hours", 3), ("overhead_hours", 3), ("cost_cny", 2), ("controller_cny", 2),
                            ("mfu", 3)):
            out[key] = round(out[key], digits)
        out["overheads_hours"] = {k: round(v, 3) for k, v in self.overheads_hours.items()}
        out["priced_on"] = self.priced_on.isoformat()
        return out


@dataclass(frozen=True)
class Estimate:
    """Everything `dream-job estimate` shows; `to_json()` is the stable machine-readable form."""

    job: str
    budget_cny: float
    cny_per_usd: float
    prices_source: str
    prices_date: date
    tokens_source: str
    tokens_are_estimate: bool
    rows: int
    tokens_per_epoch: float
    steps: int
    managed_job: bool
    today: date
    max_price_age_days: int
    cny_per_usd_source: str
    candidates: list[Candidate]
    choice: Candidate | None
    rejected: list[str]
    notes: list[str] = field(default_factory=list)
    controller: ControllerOffer | None = None  # the jobs controller a managed launch places (None: cluster)

    def price_age_days(self, candidate: Candidate) -> int:
        """Return how many days old `candidate`'s price is."""
        return (self.today - candidate.priced_on).days

    def stale_price_warning(self) -> str | None:
        """Return the warning for a choice priced longer ago than `budget.max_catalog_age_days`, else None."""
        if self.choice is None or (age := self.price_age_days(self.choice)) <= self.max_price_age_days:
            return None
        return (f"prices are {age} days old ({self.choice.priced_on}), older than `budget.max_catalog_age_days` "
                f"({self.max_price_age_days}): refresh them before launching")

    def to_json(self) -> dict[str, Any]:
        """Return `{choice, candidates, budget_cny, prices_source, prices_date, ...}` (stable keys)."""
        choice = None
        if self.choice is not None:
            full = self.choice.to_json()
            choice = {key: full[key] for key in CHOICE_KEYS}
        return {
            "job": self.job, "choice": choice, "candidates": [c.to_json() for c in self.candidates],
            "budget_cny": self.budget_cny, "cny_per_usd": self.cny_per_usd,
            "cny_per_usd_source": self.cny_per_usd_source, "prices_source": self.prices_source,
            "prices_date": self.prices_date.isoformat(), "tokens_source": self.tokens_source,
            "tokens_are_estimate": self.tokens_are_estimate, "rows": self.rows,
            "tokens_per_epoch": round(self.tokens_per_epoch), "steps": self.steps, "managed_job": self.managed_job,
            "stale_price_warning": self.stale_price_warning(), "rejected": self.rejected, "notes": self.notes,
            "controller": None if self.controller is None else {
                "infra": self.controller.infra, "instance_type": self.controller.instance_type,
                "usd_per_hour": self.controller.usd_per_hour, "priced_on": self.controller.priced_on.isoformat(),
                "source": self.controller.source},
        }


class NoOfferError(BudgetError):
    """No candidate fits within the budget; carries the estimate and the minimum budget needed."""

    def __init__(self, message: str, *, hint: str | None, estimate: Estimate, min_budget_cny: float | None) -> None:
        super().__init__(message, hint=hint)
        self.estimate = estimate
        self.min_budget_cny = min_budget_cny
