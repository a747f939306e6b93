"""Confidence intervals for accuracies and for the change between two models (pure, no torch).

- One accuracy, k correct of n: the Wilson score interval (E. B. Wilson, "Probable inference,
  the law of succession, and statistical inference", JASA 22, 1927). Unlike the Wald interval
  p ± z sqrt(p(1-p)/n) it stays inside [0, 1] and is not zero-width at 0/n or n/n, which matters
  for the small suites of a smoke run. Newcombe (1998a, below) found it the best simple method.
- A difference of two accuracies: Newcombe's hybrid score interval, built from the two Wilson
  intervals (R. G. Newcombe, "Interval estimation for the difference between independent
  proportions: comparison of eleven methods", Statistics in Medicine 17:873-890, 1998, method 10):
      lower = d - sqrt((p1 - l1)^2 + (u2 - p2)^2),  upper = d + sqrt((u1 - p1)^2 + (p2 - l2)^2)
  for d = p1 - p2. It treats the two runs as independent samples. Base and fine-tuned answer the
  same items, so when they tend to get the same items right the interval is wider than a paired
  one would be: conservative, never too narrow for that reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# The two-sided 95 % normal quantile, Phi^-1(0.975).
Z_95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """An estimate with its confidence interval, all as fractions (0.25 = 25 %)."""

    estimate: float
    lower: float
    upper: float


def wilson_interval(num_correct: int, n: int, *, z: float = Z_95) -> Interval:
    """Return k/n with its Wilson score interval (Wilson 1927).

    Args:
        num_correct: k, the number of successes (0 <= k <= n).
        n: The number of trials; 0 gives the uninformative [0, 1] around 0.
        z: The normal quantile of the confidence level (default 95 %).

    Raises:
        ValueError: k is outside [0, n].
    """
    if not 0 <= num_correct <= n:
        raise ValueError(f"the number correct must be between 0 and n = {n}, got {num_correct}")
    if n == 0:
        return Interval(0.0, 0.0, 1.0)
    p = num_correct / n
    z2_n = z * z / n
    centre = (p + z2_n / 2) / (1 + z2_n)
    half_width = z / (1 + z2_n) * math.sqrt(p * (1 - p) / n + z2_n / (4 * n))
    # Clamp rounding noise only: analytically 0 <= lower <= p <= upper <= 1, with lower = 0 at k = 0 and
    # upper = 1 at k = n, where float rounding can land a hair on the wrong side (0/7: lower 1e-17 > p).
    return Interval(p, min(p, max(0.0, centre - half_width)), max(p, min(1.0, centre + half_width)))


def newcombe_interval(num_correct_1: int, n_1: int, num_correct_2: int, n_2: int, *, z: float = Z_95) -> Interval:
    """Return p1 - p2 with Newcombe's hybrid score interval (Newcombe 1998, method 10).

    Args:
        num_correct_1: Successes of the first sample (e.g. the fine-tuned model).
        n_1: Its size (>= 1).
        num_correct_2: Successes of the second sample (e.g. the base model).
        n_2: Its size (>= 1).
        z: The normal quantile of the confidence level (default 95 %).

    Raises:
        ValueError: A sample is empty or a count is outside [0, n].
    """
    if n_1 == 0 or n_2 == 0:
        raise ValueError(f"both samples need at least one item, got n = {n_1} and {n_2}")
    first, second = wilson_interval(num_correct_1, n_1, z=z), wilson_interval(num_correct_2, n_2, z=z)
    p1, p2 = first.estimate, second.estimate
    d = p1 - p2
    lower = d - math.sqrt((p1 - first.lower) ** 2 + (second.upper - p2) ** 2)
    upper = d + math.sqrt((first.upper - p1) ** 2 + (p2 - second.lower) ** 2)
    return Interval(d, lower, upper)
