"""The comparison protocol (docs/compare.md): a declared primary endpoint that does not favour arms trained hot by
default, selection on seeds disjoint from the comparison's, seeds that vary the data order, and power in every report.
These are checks on recipes and on synthetic comparison folders; tests/test_compare.py runs real comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kelvin.config import ConfigError
from kelvin.experiments.recipe import (
    COMPARISON_FILE,
    EVALUATION_FILE,
    Endpoint,
    comparison_from_tree,
    run_folder,
)
from kelvin.experiments.report import collect_results
from kelvin.experiments.stats import minimum_detectable_effect, seeds_needed
from kelvin.tasks import build_task

ARMS = {
    "fixed": {"controller": {"name": "fixed"}, "sampling": {"temperature": 1.0}},
    "tampo": {"controller": {"name": "tampo"}},
}


def recipe(**extra) -> dict:
    return {"seeds": [0, 1, 2], "base": {"trainer": {"steps": 4}}, "arms": ARMS, **extra}


def test_the_default_primary_endpoint_is_greedy_not_a_common_temperature() -> None:
    comparison = comparison_from_tree(recipe())
    assert comparison.evaluation.endpoint == Endpoint("greedy")
    assert 0.0 in comparison.evaluation.test_temperatures  # greedy is evaluated even when not listed
    listed = comparison_from_tree(recipe(evaluation={"temperatures": [0.6, 1.0]}))
    assert listed.evaluation.test_temperatures == [0.0, 0.6, 1.0]


@pytest.mark.parametrize(
    ("primary", "endpoint"),
    [("greedy", Endpoint("greedy")), ("tuned", Endpoint("tuned")), ("T=1.0", Endpoint("common", 1.0))],
)
def test_primary_endpoints_parse(primary: str, endpoint: Endpoint) -> None:
    comparison = comparison_from_tree(recipe(evaluation={"primary": primary, "temperatures": [0, 0.6, 1.0]}))
    assert comparison.evaluation.endpoint == endpoint
    assert comparison.evaluation.wants_tuned == (primary == "tuned")


def test_the_older_primary_temperature_is_a_common_temperature_endpoint() -> None:
    comparison = comparison_from_tree(recipe(evaluation={"temperatures": [0, 1.0], "primary_temperature": 1.0}))
    assert comparison.evaluation.endpoint == Endpoint("common", 1.0)


@pytest.mark.parametrize(
    ("evaluation", "message"),
    [
        ({"primary": "best"}, r"evaluation.primary='best' must be 'greedy'"),
        ({"primary": "T=0"}, r"T=0 is greedy decoding"),
        ({"primary": "T=0.7", "temperatures": [0, 1.0]}, r"is not one of evaluation.temperatures"),
        ({"primary": "tuned", "temperatures": [0]}, r"no temperature above 0 for the 'tuned' endpoint"),
        ({"primary": "greedy", "primary_temperature": 1.0}, r"both primary='greedy' and primary_temperature"),
    ],
)
def test_bad_endpoints_are_refused_with_the_field(evaluation: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        comparison_from_tree(recipe(evaluation=evaluation))


def test_selection_seeds_that_are_comparison_seeds_are_refused() -> None:
    """Reusing a selection run as a comparison run carries its selection luck into the test (winner's curse)."""
    overlapping = {"arm": "fixed", "temperatures": [0.8, 1.2], "seeds": [2, 100]}
    with pytest.raises(ConfigError, match=r"selection.seeds share \[2\] with seeds=\[0, 1, 2\].*winner's curse"):
        comparison_from_tree(recipe(selection=overlapping))
    disjoint = comparison_from_tree(recipe(selection={**overlapping, "seeds": [100, 101]}))
    assert disjoint.selection is not None and disjoint.selection.seeds == [100, 101]
    assert [arm.name for arm in disjoint.selection_arms()] == ["fixed-T0.8", "fixed-T1.2"]
    chosen = disjoint.with_selected_temperature(1.2)
    assert chosen.config(chosen.arm("fixed"), 0).sampling.temperature == 1.2
    assert chosen.to_dict()["selection"]["chosen_temperature"] == 1.2


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ({"arm": "nope", "temperatures": [1.0], "seeds": [100]}, r"selection.arm='nope' is not an arm"),
        ({"arm": "tampo", "temperatures": [1.0], "seeds": [100]}, r"uses controller 'tampo'.*fixed-temperature"),
        ({"arm": "fixed", "temperatures": [0, 1.0], "seeds": [100]}, r"distinct temperatures above 0"),
        ({"arm": "fixed", "temperatures": [1.0], "seeds": []}, r"selection.seeds=\[\] must be a non-empty list"),
    ],
)
def test_bad_selections_are_refused(selection: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        comparison_from_tree(recipe(selection=selection))


def test_a_seed_varies_the_data_order_paired_across_arms_and_keeps_the_held_out_problems() -> None:
    comparison = comparison_from_tree(recipe())
    fixed, tampo = comparison.arms
    configs = {(arm.name, seed): comparison.config(arm, seed) for arm in (fixed, tampo) for seed in (0, 1)}
    assert configs[("fixed", 0)].task.seed == configs[("tampo", 0)].task.seed  # paired
    assert configs[("fixed", 0)].task.seed != configs[("fixed", 1)].task.seed  # a rerun's data order
    tasks = {seed: build_task(configs[("fixed", seed)]) for seed in (0, 1)}
    assert [e.prompt for e in tasks[0].test] == [e.prompt for e in tasks[1].test]  # evaluated alike
    assert [tasks[0].train(i).prompt for i in range(16)] != [tasks[1].train(i).prompt for i in range(16)]
    assert [e.prompt for e in tasks[0].validation()] == [e.prompt for e in tasks[1].validation()]
    pinned = comparison_from_tree(recipe(vary_data_order=False))
    assert {pinned.config(arm, seed).task.seed for arm in pinned.arms for seed in (0, 1, 2)} == {1234}


def test_validation_and_test_problems_are_disjoint_streams() -> None:
    task = build_task(comparison_from_tree(recipe()).config(comparison_from_tree(recipe()).arms[0], 0))
    test, validation = {e.prompt for e in task.test}, {e.prompt for e in task.validation()}
    assert len(test & validation) < 0.05 * len(test)  # only chance collisions of random additions


# --------------------------------------------------------------------------------------------------------------------
# The report of a synthetic comparison: endpoints, tuned choice, power
# --------------------------------------------------------------------------------------------------------------------


def metrics(avg: float, best: float) -> dict:
    return {"avg@4": avg, "pass@1": avg, "pass@4": best}


def setting(avg: float, best: float | None = None) -> dict:
    m = metrics(avg, avg if best is None else best)
    return {"temperature": None, "tasks": {"arithmetic": {"metrics": m}}, "metrics": m}


def write_comparison(root: Path, primary: str, greedy: dict, common: dict, validation: dict | None = None) -> dict:
    """A finished comparison of arms fixed and tampo over seeds 0..n-1 with the given per-seed numbers."""
    evaluation = {
        "primary": primary,
        "temperatures": [0.6, 1.0],
        "tuned": validation is not None,
        "k": 4,
        "size": 10,
    }
    tree = {"seeds": list(range(len(greedy["fixed"]))), "base": {"trainer": {"steps": 4}}, "arms": ARMS}
    comparison = comparison_from_tree({**tree, "evaluation": evaluation})
    root.mkdir(parents=True, exist_ok=True)
    (root / COMPARISON_FILE).write_text(json.dumps(comparison.to_dict()))
    settings = comparison.to_dict()["evaluation"]
    for arm in ARMS:
        for seed in comparison.seeds:
            folder = run_folder(root, arm, seed)
            folder.mkdir(parents=True)
            rows = [{"step": s, "reward": 0.5, "temperature/mean": 1.0 if arm == "fixed" else 0.7} for s in (1, 2)]
            (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            results = {"greedy": setting(greedy[arm][seed])}
            results |= {label: setting(*values[arm][seed]) for label, values in common.items()}
            data = {"settings": {**settings, "plan": {}}, "arm": arm, "seed": seed, "results": results}
            if validation is not None:
                data["validation"] = {label: setting(values[arm][seed]) for label, values in validation.items()}
            (folder / EVALUATION_FILE).write_text(json.dumps(data))
    return settings


def test_report_decides_on_the_declared_endpoint_and_states_its_power(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 8
    fixed = rng.uniform(0.3, 0.5, n)
    tampo = fixed + rng.normal(0.01, 0.03, n)
    common = {
        "T=1": {"fixed": [(0.2, 0.5)] * n, "tampo": [(0.1, 0.4)] * n},
        "T=0.6": {a: [(0.3, 0.5)] * n for a in ARMS},
    }
    write_comparison(tmp_path, "greedy", {"fixed": list(fixed), "tampo": list(tampo)}, common)
    results = collect_results(tmp_path)
    assert results.primary["endpoint"] == "greedy"
    assert results.arms["tampo"].final_accuracy.mean == pytest.approx(float(np.mean(tampo)))
    differences = tampo - fixed
    sd = float(np.std(differences, ddof=1))
    mde = results.to_dict()["power"]["minimum_detectable_effect"]["tampo"]
    assert mde == pytest.approx(minimum_detectable_effect(sd, n))
    assert results.power.seeds_needed["tampo"] == seeds_needed(0.02, sd)
    assert results.statement.startswith("Primary endpoint, declared in the recipe before the runs: greedy accuracy")
    assert f"at least ±{mde:.3f} (tampo) would have been detected with 80% probability" in results.statement
    # the common-temperature numbers are there, as a secondary endpoint
    secondary = results.arms["tampo"].secondary
    assert secondary["T=1 avg@4"].interval.mean == pytest.approx(-0.1)
    assert secondary["greedy"].interval.mean == pytest.approx(float(np.mean(differences)))


def test_a_common_temperature_primary_says_when_the_arms_trained_at_different_temperatures(tmp_path: Path) -> None:
    n = 3
    common = {"T=1": {"fixed": [(0.5, 0.6), (0.52, 0.6), (0.49, 0.6)], "tampo": [(0.4, 0.5)] * n}}
    write_comparison(tmp_path, "T=1", {"fixed": [0.5] * n, "tampo": [0.5] * n}, common)
    statement = collect_results(tmp_path).statement
    assert "avg@4 at the common temperature T=1" in statement
    assert "trained at different mean temperatures (fixed 1.00, tampo 0.70)" in statement


def test_tuned_takes_each_runs_validation_best_temperature_on_the_test_split(tmp_path: Path) -> None:
    common = {
        "T=0.6": {"fixed": [(0.30, 0.6), (0.31, 0.6)], "tampo": [(0.40, 0.7), (0.41, 0.7)]},
        "T=1": {"fixed": [(0.50, 0.8), (0.52, 0.8)], "tampo": [(0.20, 0.5), (0.21, 0.5)]},
    }
    validation = {  # fixed prefers T=1 at both seeds; tampo prefers T=0.6 at seed 0 and ties at seed 1 (first wins)
        "T=0.6": {"fixed": [0.1, 0.1], "tampo": [0.9, 0.5]},
        "T=1": {"fixed": [0.9, 0.9], "tampo": [0.2, 0.5]},
    }
    write_comparison(tmp_path, "tuned", {"fixed": [0.1, 0.1], "tampo": [0.1, 0.1]}, common, validation)
    results = collect_results(tmp_path)
    assert [r.tuned_setting for r in results.arms["tampo"].seeds.values()] == ["T=0.6", "T=0.6"]
    assert [r.final_accuracy for r in results.arms["fixed"].seeds.values()] == [0.50, 0.52]  # test, not validation
    assert [r.final_accuracy for r in results.arms["tampo"].seeds.values()] == [0.40, 0.41]
    assert results.arms["tampo"].tuned["pass@4"].mean == pytest.approx(0.7)
    assert results.arms["tampo"].vs_best_fixed.interval.mean == pytest.approx(-0.105)
