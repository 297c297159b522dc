"""Small statistics for comparing arms over seeds: t-intervals of a mean and of paired differences.

With n seeds the 95% interval of a mean is mean +- t_{0.975, n-1} * s / sqrt(n) (s: sample standard deviation,
ddof = 1). With one seed there is no interval: the bounds are None, never a made-up width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval (low/high None when n < 2)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    std: float | None = None  # sample standard deviation (ddof = 1), None when n < 2

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)

    def to_dict(self) -> dict[str, float | int | None]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n, "std": self.std}


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and Student-t confidence interval of `values` (independent replicates, e.g. one per seed)."""
    if not values:
        raise ValueError("mean_interval needs at least one value.")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence} must be in (0, 1), e.g. 0.95.")
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return Interval(mean=mean, low=None, high=None, n=n)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * std / math.sqrt(n)
    return Interval(mean=mean, low=mean - half, high=mean + half, n=n, std=std)


def paired_differences(values: Mapping[int, float], reference: Mapping[int, float]) -> dict[int, float]:
    """values[s] - reference[s] for every seed s present in both (pairing by seed)."""
    return {seed: values[seed] - reference[seed] for seed in sorted(values) if seed in reference}


def paired_interval(
    values: Mapping[int, float], reference: Mapping[int, float], confidence: float = 0.95
) -> tuple[dict[int, float], Interval | None]:
    """The per-seed differences and the t-interval of their mean; None when no seed is shared."""
    diffs = paired_differences(values, reference)
    if not diffs:
        return diffs, None
    return diffs, mean_interval(list(diffs.values()), confidence)
