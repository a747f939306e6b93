"""The cost preflight behind `dream-job estimate`: GPU catalog, memory, time and price models.

Imports no torch and nothing from the container side except `dream_job.spec` and
`dream_job.errors`, so it runs on a laptop without torch (`tests/unit/test_spec.py` checks it).

Public API:
- `estimate(spec, data_report=..., catalog_dir=None, now=None) -> Estimate` (`Estimate.to_json()`);
  raises `NoOfferError` (a `BudgetError`, with `.estimate` and `.min_budget_cny`) when nothing fits.
- `load_data_report(path) -> dict`. The launch line for a choice is `dream_job.launch.LaunchPlan.sky_command()`.
- `plan_memory(spec, method, num_gpus) -> MemoryEstimate`: the container preflight's check;
  `fallback_methods(method)`: what to train with instead when it does not fit (preflight, OOM hint);
  `disk_need_bytes(spec, ...)`: the run's disk need (preflight).
- The caps a launch sets from the budget and the shutdown grace they leave: `budget.caps` (`run_cap`,
  `fitting_budget_cny`, `SHUTDOWN_GRACE_S`); the estimate accepts only offers whose hours fit them.
- The jobs controller of a managed job: `budget.controller.controller_offer` (its place, machine and catalog
  price; `Estimate.controller`).
- Models: `budget.memory.estimate_memory`, `budget.timing.estimate_time`, `budget.catalog.load_prices`,
  `budget.gpus.resolve_gpu`; FLOPs in `budget.flops`; checkpoint cadence and cost in `budget.checkpoints`. Data and its sources: `budget/data/`.
"""

from budget.disk import disk_need_bytes
from budget.estimate import estimate, fallback_methods, plan_memory
from budget.result import Candidate, Estimate, NoOfferError
from budget.tokens import load_data_report

__all__ = ["Candidate", "Estimate", "NoOfferError", "disk_need_bytes", "estimate", "fallback_methods", "load_data_report",
           "plan_memory"]
