"""The power of a paired comparison (kelvin/experiments/stats.py), checked against published values and a simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from kelvin.experiments.stats import minimum_detectable_effect, paired_power, seeds_needed


@pytest.mark.parametrize(
    ("effect_size", "seeds", "actual_power"),
    [
        # G*Power 3.1, "Means: difference between two dependent means (matched pairs)", two tails, alpha 0.05,
        # power 0.80: total sample size and the actual power it reports (Faul et al. 2007; the standard tables).
        (0.5, 34, 0.8077775),
        (0.8, 15, 0.8213105),
    ],
)
def test_seeds_needed_matches_gpower(effect_size: float, seeds: int, actual_power: float) -> None:
    assert seeds_needed(effect_size, sd=1.0) == seeds
    assert paired_power(effect_size, 1.0, seeds) == pytest.approx(actual_power, abs=1e-6)
    assert paired_power(effect_size, 1.0, seeds - 1) < 0.8  # one seed fewer is not enough


def test_minimum_detectable_effect_is_detected_80_percent_of_the_time_in_simulation() -> None:
    """Simulate paired differences at the computed MDE and run the t-test (NumPy + scipy.stats.ttest_1samp)."""
    sd, n = 0.035, 20
    mde = minimum_detectable_effect(sd, n)
    rng = np.random.default_rng(0)
    trials = 40000
    samples = rng.normal(mde, sd, size=(trials, n))
    rejected = stats.ttest_1samp(samples, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.80, abs=0.01)
    # half the effect is seen far less often: the MDE is the threshold, not a loose bound
    smaller = stats.ttest_1samp(rng.normal(mde / 2, sd, size=(trials, n)), 0.0, axis=1).pvalue < 0.05
    assert smaller.mean() < 0.4


def test_the_audit_numbers() -> None:
    """The committed arithmetic comparison's paired SD 0.0355 at 5 seeds: MDE 0.060, and 27 seeds for +0.02."""
    assert minimum_detectable_effect(0.0355, 5) == pytest.approx(0.0597, abs=5e-4)
    assert seeds_needed(0.02, 0.0355) == 27


def test_power_needs_two_seeds_and_a_nonzero_effect() -> None:
    with pytest.raises(ValueError, match="n >= 2"):
        minimum_detectable_effect(0.1, 1)
    with pytest.raises(ValueError, match="effect of 0"):
        seeds_needed(0.0, 0.1)
