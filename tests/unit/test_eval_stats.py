"""Interval maths of the evaluation report against published values and a brute-force definition."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from dream_job.eval.stats import Z_95, Interval, newcombe_interval, wilson_interval


def test_z_is_the_975_quantile() -> None:
    assert Z_95 == pytest.approx(NormalDist().inv_cdf(0.975), abs=1e-12)


# Newcombe (1998), "Two-sided confidence intervals for the single proportion: comparison of seven
# methods", Statistics in Medicine 17:857-872, Table I, method 3 (score interval, no continuity
# correction), 4 decimals.
WILSON_PUBLISHED = [
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0000, 0.1611),
    (1, 29, 0.0061, 0.1718),
]


@pytest.mark.parametrize(("k", "n", "lower", "upper"), WILSON_PUBLISHED)
def test_wilson_matches_published_examples(k: int, n: int, lower: float, upper: float) -> None:
    interval = wilson_interval(k, n)
    assert interval.estimate == k / n
    assert (round(interval.lower, 4), round(interval.upper, 4)) == (lower, upper)


def wilson_by_bisection(k: int, n: int, z: float) -> tuple[float, float]:
    """The Wilson interval by its definition: the p with |k/n - p| <= z sqrt(p (1 - p) / n)."""
    p_hat = k / n

    def outside(p: float) -> bool:
        return abs(p_hat - p) > z * math.sqrt(p * (1 - p) / n)

    def boundary(lo: float, hi: float) -> float:  # lo inside, hi outside (or the reverse)
        inside_lo = not outside(lo)
        for _ in range(200):
            mid = (lo + hi) / 2
            if (not outside(mid)) == inside_lo:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else boundary(p_hat, 0.0)
    upper = 1.0 if k == n else boundary(p_hat, 1.0)
    return lower, upper


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (3, 4), (18, 40), (200, 200), (7, 500), (1, 3)])
@pytest.mark.parametrize("z", [Z_95, 1.0, 2.5758])
def test_wilson_equals_its_definition(k: int, n: int, z: float) -> None:
    interval = wilson_interval(k, n, z=z)
    assert (interval.lower, interval.upper) == pytest.approx(wilson_by_bisection(k, n, z), abs=1e-12)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) == Interval(0.0, 0.0, 1.0)  # nothing evaluated: nothing known
    assert wilson_interval(0, 8).lower == 0.0 and wilson_interval(8, 8).upper == 1.0
    assert wilson_interval(0, 8).upper > 0.0  # unlike Wald, not zero-width at 0/n
    with pytest.raises(ValueError, match="between 0 and n = 4, got 5"):
        wilson_interval(5, 4)


def test_wilson_brackets_the_estimate_for_every_k() -> None:
    """The chart's whiskers are estimate - lower and upper - estimate: float rounding must not make one negative
    (0/7 gave a lower limit of 1e-17 above the estimate, and matplotlib refused to draw the report's chart)."""
    for n in range(1, 200):
        for k in range(n + 1):
            interval = wilson_interval(k, n)
            assert 0.0 <= interval.lower <= interval.estimate <= interval.upper <= 1.0, (k, n)
    assert wilson_interval(0, 7).lower == 0.0 and wilson_interval(10, 10).upper == 1.0


# Newcombe (1998), "Interval estimation for the difference between independent proportions:
# comparison of eleven methods", Statistics in Medicine 17:873-890, Table II, method 10.
NEWCOMBE_PUBLISHED = [
    (56, 70, 48, 80, 0.0524, 0.3339),
    (9, 10, 3, 10, 0.1705, 0.8090),
    (5, 56, 0, 29, -0.0381, 0.1926),
    (0, 10, 0, 20, -0.1611, 0.2775),
    (0, 10, 0, 10, -0.2775, 0.2775),
    (10, 10, 0, 20, 0.6791, 1.0000),
    (10, 10, 0, 10, 0.6075, 1.0000),
]


@pytest.mark.parametrize(("k1", "n1", "k2", "n2", "lower", "upper"), NEWCOMBE_PUBLISHED)
def test_newcombe_matches_published_examples(k1: int, n1: int, k2: int, n2: int, lower: float, upper: float) -> None:
    interval = newcombe_interval(k1, n1, k2, n2)
    assert interval.estimate == pytest.approx(k1 / n1 - k2 / n2)
    assert (round(interval.lower, 4), round(interval.upper, 4)) == (lower, upper)


def test_newcombe_is_antisymmetric_and_refuses_empty_samples() -> None:
    forward, backward = newcombe_interval(30, 40, 18, 40), newcombe_interval(18, 40, 30, 40)
    assert (forward.estimate, forward.lower, forward.upper) == pytest.approx(
        (-backward.estimate, -backward.upper, -backward.lower))
    with pytest.raises(ValueError, match="at least one item, got n = 0 and 4"):
        newcombe_interval(0, 0, 1, 4)
