"""What an estimate returns: priced candidates, the choice, and the launch command for it.

`Estimate.to_json()` is the stable machine-readable form of `dream-job estimate --json`:
`{choice, candidates, budget_cny, prices_source, prices_date, ...}`; `choice` is null or holds
`gpu, count, method, cloud, spot, peak_gib, hours, cost_cny, usd_per_hour` (+ `accelerator`),
each candidate those fields plus `fits, within_budget, reason` and the details behind them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from dream_job.errors import BudgetError

CHOICE_KEYS = ("gpu", "count", "method", "cloud", "spot", "peak_gib", "hours", "cost_cny", "usd_per_hour")


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
    spot: bool
    usd_per_hour: float
    peak_gib: float
    vram_gib: float
    host_gib: float
    host_mem_gib: float | None
    hours: float
    train_hours: float
    eval_hours: float
    overhead_hours: float
    cost_cny: float
    mfu: float
    mfu_measured: bool
    fits: bool
    within_budget: bool
    recipe_change: bool
    reason: str

    @property
    def accepted(self) -> bool:
        return self.fits and self.within_budget and not self.reason

    def to_json(self) -> dict[str, Any]:
        """Return the candidate as JSON-ready values (numbers rounded for reading)."""
        out = asdict(self)
        for key, digits in (("peak_gib", 2), ("vram_gib", 2), ("host_gib", 1), ("hours", 3), ("train_hours", 3),
                            ("eval_hours", 3), ("overhead_hours", 3), ("cost_cny", 2), ("mfu", 3)):
            out[key] = round(out[key], digits)
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
    infra: str | None
    candidates: list[Candidate]
    choice: Candidate | None
    rejected: list[str]
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return `{choice, candidates, budget_cny, prices_source, prices_date, ...}` (stable keys)."""
        choice = None
        if self.choice is not None:
            full = self.choice.to_json()
            choice = {key: full[key] for key in CHOICE_KEYS} | {"accelerator": full["accelerator"]}
        return {
            "job": self.job, "choice": choice, "candidates": [c.to_json() for c in self.candidates],
            "budget_cny": self.budget_cny, "cny_per_usd": self.cny_per_usd, "prices_source": self.prices_source,
            "prices_date": self.prices_date.isoformat(), "tokens_source": self.tokens_source,
            "tokens_are_estimate": self.tokens_are_estimate, "rows": self.rows,
            "tokens_per_epoch": round(self.tokens_per_epoch), "steps": self.steps, "managed_job": self.managed_job,
            "infra": self.infra, "rejected": self.rejected, "notes": self.notes,
        }


class NoOfferError(BudgetError):
    """No candidate fits within the budget; carries the estimate and the minimum budget needed."""

    def __init__(self, message: str, *, hint: str | None, estimate: Estimate, min_budget_cny: float | None) -> None:
        super().__init__(message, hint=hint)
        self.estimate = estimate
        self.min_budget_cny = min_budget_cny


def sky_launch_command(result: Estimate, *, task_yaml: str = "sky.yaml") -> str:
    """Return the `sky jobs launch` (or `sky launch`) line for the chosen offer.

    Raises:
        ValueError: The estimate has no choice.
    """
    choice = result.choice
    if choice is None:
        raise ValueError("the estimate has no choice to launch")
    parts = (["sky", "jobs", "launch", "-n", result.job] if result.managed_job
             else ["sky", "launch", "-c", result.job, "--down"])
    parts += ["--gpus", f"{choice.accelerator}:{choice.count}"]
    if choice.spot:
        parts.append("--use-spot")
    if result.infra:
        parts += ["--infra", result.infra]
    return " ".join([*parts, task_yaml])
