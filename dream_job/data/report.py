"""The data report: row counts and token-length statistics of a prep run.

`data_report.json` is read by later stages and by `dream-job estimate --data-report`, so its
keys are stable: `rows_read`, `rows_kept`, `rows_holdout`, `rows_skipped` (reason -> count),
`rows_truncated`, `rows_dropped` (reason -> count under `drop_reasons`), `max_length`,
`fraction_over_max_length`, `tokens` (min/mean/p50/p90/p99/max of `prompt`, `trace`, `answer`,
`total`, measured before truncation on the training rows) and `train_tokens` (the same
statistics and the sum after truncation: what one epoch trains on).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

STAT_KEYS = ("min", "mean", "p50", "p90", "p99", "max")


def length_stats(values: Sequence[int]) -> dict[str, float]:
    """Return min, mean, p50, p90, p99 and max of `values` (linear-interpolated percentiles)."""
    if not values:
        return {key: 0.0 for key in STAT_KEYS}
    ordered = sorted(values)

    def percentile(q: float) -> float:
        position = (len(ordered) - 1) * q
        low, high = math.floor(position), math.ceil(position)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)

    return {
        "min": float(ordered[0]),
        "mean": sum(ordered) / len(ordered),
        "p50": percentile(0.50),
        "p90": percentile(0.90),
        "p99": percentile(0.99),
        "max": float(ordered[-1]),
    }


def build_report(
    *,
    rows_read: int,
    rows_holdout: int,
    skipped: dict[str, int],
    dropped: dict[str, int],
    rows_truncated: int,
    max_length: int,
    lengths: dict[str, list[int]],
    kept_lengths: list[int],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """Assemble the report dictionary (see the module docstring for the keys)."""
    totals = lengths["total"]
    return {
        **extra,
        "rows_read": rows_read,
        "rows_kept": len(kept_lengths),
        "rows_holdout": rows_holdout,
        "rows_skipped": dict(sorted(skipped.items())),
        "rows_truncated": rows_truncated,
        "rows_dropped": sum(dropped.values()),
        "drop_reasons": dict(sorted(dropped.items())),
        "max_length": max_length,
        "fraction_over_max_length": (sum(t > max_length for t in totals) / len(totals)) if totals else 0.0,
        "tokens": {part: length_stats(values) for part, values in lengths.items()},
        "train_tokens": {"sum": sum(kept_lengths), **length_stats(kept_lengths)},
    }
