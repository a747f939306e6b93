"""How many tokens the job trains on and how many prompts it evaluates.

Input: the data report of `dream-job prep` (`data_report.json`, local or from a cloud run) when
there is one; else the shipped length profile of s1K-1.1 (`budget/data/s1k_lengths.toml`, an
estimate built from published figures, labelled as such in the output). Output: `Workload`.
"""

from __future__ import annotations

import functools
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from budget.gpus import DATA_DIR
from dream_job.errors import BudgetError
from dream_job.spec import JobSpec

PROFILE_DATASET = "simplescaling/s1K-1.1"


@dataclass(frozen=True)
class EvalSuite:
    """One benchmark as the sampler sees it: items per evaluated model and mean prompt tokens."""

    name: str
    items: int
    prompt_tokens: float


@dataclass(frozen=True)
class Workload:
    """Training rows and tokens per epoch (after truncation), evaluation suites, and their source."""

    rows: int
    tokens_per_epoch: float
    mean_length: float
    suites: list[EvalSuite]
    source: str
    is_estimate: bool


@functools.cache
def length_profile() -> dict[str, Any]:
    """Return the shipped s1K-1.1 length profile."""
    with open(DATA_DIR / "s1k_lengths.toml", "rb") as f:
        return tomllib.load(f)


def truncated_moments(quantiles: list[list[float]], max_length: int) -> tuple[float, float, float]:
    """Integrate a piecewise-linear quantile function Q(u) over u in [0, 1].

    Returns:
        (E[min(Q, L)], share of rows with Q <= L, E[Q; Q <= L]) where L = max_length: the mean
        trained length when long rows are cut, and what `drop` keeps.
    """
    clipped = fits = kept_sum = 0.0
    for (u0, a), (u1, b) in zip(quantiles, quantiles[1:]):
        du = u1 - u0
        if b <= max_length:
            clipped += (a + b) / 2 * du
            fits += du
            kept_sum += (a + b) / 2 * du
        elif a >= max_length:
            clipped += max_length * du
        else:
            split = du * (max_length - a) / (b - a)
            clipped += (a + max_length) / 2 * split + max_length * (du - split)
            fits += split
            kept_sum += (a + max_length) / 2 * split
    return clipped, fits, kept_sum


def load_data_report(path: str | Path) -> dict[str, Any]:
    """Read a `data_report.json` (from `dream-job prep`, here or copied from a cloud run).

    Raises:
        BudgetError: The file is missing or not JSON.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BudgetError(f"data report `{path}` does not exist",
                          hint="write it with `dream-job prep JOB.yaml` (it lands in `<run_dir>/data/`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BudgetError(f"data report `{path}` is not JSON", caused_by=[str(exc)]) from None


def _suites(spec: JobSpec, holdout_rows: int, holdout_prompt: float) -> list[EvalSuite]:
    catalog = length_profile()["eval_suites"]
    limit = spec.eval.limit
    suites = []
    for name in spec.eval.suites:
        if name == "s1k_holdout":
            items, prompt = holdout_rows, holdout_prompt
        else:
            items, prompt = catalog[name]["items"], catalog[name]["prompt_tokens"]
        suites.append(EvalSuite(name, min(items, limit) if limit else items, float(prompt)))
    return suites


def workload(spec: JobSpec, data_report: dict[str, Any] | None) -> Workload:
    """Return the training and evaluation workload of `spec`.

    Raises:
        BudgetError: The report was made with another `data.max_length`, lacks the expected
            keys, or there is no report and the dataset is not s1K-1.1 (no profile to fall back on).
    """
    max_length = spec.data.max_length
    if data_report is not None:
        try:
            made_with, rows = int(data_report["max_length"]), int(data_report["rows_kept"])
            tokens, prompt = float(data_report["train_tokens"]["sum"]), float(data_report["tokens"]["prompt"]["mean"])
            holdout = int(data_report.get("rows_holdout", spec.data.holdout_size))
        except (KeyError, TypeError, ValueError) as exc:
            what = f"key `{exc.args[0]}`" if isinstance(exc, KeyError) else "the expected number fields"
            raise BudgetError(
                f"the data report lacks {what} and is not a `data_report.json` of `dream-job prep`",
                hint="pass the `data_report.json` that `dream-job prep` wrote under `<run_dir>/data/`",
            ) from None
        if made_with != max_length:
            raise BudgetError(
                f"the data report was made with `data.max_length` {made_with}, but the job sets {max_length}",
                hint="rerun `dream-job prep` with this job file, or estimate with "
                f"`--set data.max_length={made_with}`",
            )
        return Workload(rows=rows, tokens_per_epoch=tokens, mean_length=tokens / max(rows, 1),
                        suites=_suites(spec, holdout, prompt), source="data report", is_estimate=False)
    if spec.data.dataset != PROFILE_DATASET:
        raise BudgetError(
            f"no data report for `data.dataset` `{spec.data.dataset}`, and the shipped length profile covers "
            f"`{PROFILE_DATASET}` only",
            hint="run `dream-job prep JOB.yaml`, then `dream-job estimate JOB.yaml --data-report "
            "<run_dir>/data/data_report.json`",
        )
    profile = length_profile()
    clipped, fits, kept_sum = truncated_moments(profile["total_quantiles"], max_length)
    rows = profile["rows"] - spec.data.holdout_size
    if spec.data.truncation == "drop":
        rows, mean = int(rows * fits), kept_sum / max(fits, 1e-9)
    else:
        mean = clipped
    return Workload(
        rows=rows, tokens_per_epoch=rows * mean, mean_length=mean,
        suites=_suites(spec, spec.data.holdout_size, profile["prompt_mean"]),
        source=f"ESTIMATE from the shipped {PROFILE_DATASET} length profile (no data report; "
        "`dream-job prep` measures it)",
        is_estimate=True,
    )
