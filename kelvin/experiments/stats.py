"""Small statistics for comparing arms over seeds: t-intervals of a mean and of paired differences.

With n seeds the 95% interval of a mean is mean +- t_{0.975, n-1} * s / sqrt(n) (s: sample standard deviation,
ddof = 1). With one seed there is no interval: the bounds are None, never a made-up width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats


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


# --------------------------------------------------------------------------------------------------------------------
# Power of a paired comparison
# --------------------------------------------------------------------------------------------------------------------
#
# A paired t-test over n seeds of differences with standard deviation sd rejects "no difference" (two-sided, level
# alpha) when |mean| / (sd / sqrt(n)) > t_{1 - alpha/2, n-1}. Under a true difference delta that statistic follows a
# noncentral t with n - 1 degrees of freedom and noncentrality delta * sqrt(n) / sd, so the power at delta is
#   P(T > t_crit) + P(T < -t_crit),   T ~ nct(n - 1, delta * sqrt(n) / sd).
# The minimum detectable effect is the delta at which that power reaches the target (80% by convention).

POWER = 0.8
ALPHA = 0.05


def paired_power(delta: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test over n seeds to detect a true mean difference `delta`."""
    if n < 2:
        raise ValueError(f"paired_power needs n >= 2 seeds, got {n}.")
    if sd <= 0:
        return 1.0 if delta != 0 else alpha
    df = n - 1
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    noncentrality = abs(delta) * math.sqrt(n) / sd
    upper = float(stats.nct.sf(critical, df, noncentrality))
    # The wrong-sign tail is below 1e-8 once the effect is large, where scipy's nct.cdf can return NaN: count it as 0.
    lower = float(np.nan_to_num(stats.nct.cdf(-critical, df, noncentrality)))
    return upper + lower


def minimum_detectable_effect(sd: float, n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest true difference the paired t-test over n seeds detects with probability `power`."""
    if n < 2:
        raise ValueError(f"minimum_detectable_effect needs n >= 2 seeds, got {n}.")
    if sd <= 0:
        return 0.0
    # power rises monotonically in delta; bracket then bisect (brentq) on delta / sd
    high = 1.0
    while paired_power(high * sd, sd, n, alpha) < power:
        high *= 2
    solution = optimize.brentq(lambda x: paired_power(x * sd, sd, n, alpha) - power, 0.0, high, xtol=1e-12)
    return float(solution) * sd


def seeds_needed(effect: float, sd: float, power: float = POWER, alpha: float = ALPHA, limit: int = 100_000) -> int:
    """The fewest seeds (>= 2) whose paired t-test detects a true difference `effect` with probability `power`."""
    if effect == 0:
        raise ValueError("seeds_needed: an effect of 0 cannot be detected; pass the difference to detect, e.g. 0.02.")
    if sd <= 0:
        return 2
    n = 2
    while paired_power(effect, sd, n, alpha) < power:
        n += 1
        if n > limit:
            raise ValueError(f"seeds_needed: more than {limit} seeds for effect {effect} at sd {sd}.")
    return n
