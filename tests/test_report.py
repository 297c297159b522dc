"""The report from files alone: synthetic comparison folders with known numbers, checked against scipy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from kelvin.experiments.recipe import COMPARISON_FILE, EVALUATION_FILE, TOKEN_SAMPLES_FILE, WARMUP_FILE, run_folder
from kelvin.experiments.report import (
    best_fixed_arm,
    collect_results,
    summary_rows,
    write_comparison_report,
    write_report,
    write_run_report,
)
from kelvin.experiments.results import ArmSummary, SeedResult, TrainingSummary
from kelvin.experiments.stats import mean_interval, paired_interval

SETTINGS = {
    "temperatures": [0.0, 1.0],
    "primary_temperature": 1.0,
    "k": 4,
    "size": 10,
    "tasks": [],
    "top_p": 1.0,
    "max_completion_length": 0,
    "batch_size": 256,
    "seed": 0,
    "learned_temperature": True,
    "token_samples": 0,
}
BASE = {"trainer": {"steps": 6, "prompts_per_step": 8, "micro_batch_size": 32}, "sampling": {"num_generations": 4}}
CANDIDATES = [0.6, 1.0, 1.4]


def scipy_interval(values: list[float]) -> tuple[float, float]:
    return stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))


def write_run(root: Path, arm: str, seed: int, accuracy: dict[str, float], controller: str) -> None:
    """A finished run's files: metrics.jsonl (6 steps) and evaluation.json whose avg@4 is `accuracy[setting]`."""
    folder = run_folder(root, arm, seed)
    folder.mkdir(parents=True)
    rows = [{"step": 0, "eval/accuracy": 0.4}]
    for step in range(1, 7):
        row = {"step": step, "reward": 0.4 + 0.05 * step + 0.01 * seed, "temperature/mean": 1.0, "time/step": 1.5}
        if controller == "tampo":
            weights = np.array([6 - step, 3.0, step], dtype=float)
            row.update({f"temperature/prob/{c:g}": float(w) for c, w in zip(CANDIDATES, weights / weights.sum())})
        if controller == "introspective":
            row["temperature/entropy_corr"] = 0.1 * step - 0.2
        if step in (3, 6):
            row["eval/accuracy"] = 0.4 + 0.02 * step
        rows.append(row)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {}
    for label, value in accuracy.items():
        counts = _counts(value)
        metrics = {"avg@4": value, "pass@1": value, "pass@2": min(1.0, value + 0.1), "pass@4": min(1.0, value + 0.2)}
        results[label] = {
            "temperature": None,
            "tasks": {"arithmetic": {"metrics": metrics, "correct_counts": counts}},
            "metrics": metrics,
        }
    (folder / EVALUATION_FILE).write_text(json.dumps({"settings": SETTINGS, "results": results}))
    if controller == "introspective":
        rng = np.random.default_rng(seed)
        entropy = rng.uniform(0, 2, 200)
        tau = 0.8 + 0.2 * entropy + rng.normal(0, 0.05, 200)
        (folder / TOKEN_SAMPLES_FILE).write_text(
            json.dumps({"temperature": tau.tolist(), "entropy_at_T1": entropy.tolist(), "token": ["1"] * 200})
        )


def _counts(value: float) -> list[int]:
    total = round(value * 40)
    return [min(4, max(0, total - 4 * i)) for i in range(10)]


def write_comparison(
    root: Path, accuracies: dict[str, dict[int, dict[str, float]]], controllers: dict[str, str]
) -> None:
    seeds = sorted({s for per_seed in accuracies.values() for s in per_seed})
    root.mkdir(parents=True, exist_ok=True)
    comparison = {
        "name": "synthetic",
        "description": "numbers made up for the test",
        "seeds": seeds,
        "allow_non_controller_overrides": False,
        "evaluation": SETTINGS,
        "arms": {arm: {"controller": controllers[arm], "overrides": {}} for arm in accuracies},
        "base": BASE,
    }
    (root / COMPARISON_FILE).write_text(json.dumps(comparison))
    for arm, per_seed in accuracies.items():
        for seed, accuracy in per_seed.items():
            write_run(root, arm, seed, accuracy, controllers[arm])


CONTROLLERS = {"fixed-0.6": "fixed", "fixed-1.0": "fixed", "tampo": "tampo", "introllm": "introspective"}
ACCURACIES = {
    "fixed-0.6": {0: {"greedy": 0.7, "T=1": 0.50}, 1: {"greedy": 0.7, "T=1": 0.52}, 2: {"greedy": 0.7, "T=1": 0.48}},
    "fixed-1.0": {0: {"greedy": 0.8, "T=1": 0.60}, 1: {"greedy": 0.75, "T=1": 0.65}, 2: {"greedy": 0.7, "T=1": 0.55}},
    "tampo": {0: {"greedy": 0.8, "T=1": 0.70}, 1: {"greedy": 0.8, "T=1": 0.76}, 2: {"greedy": 0.8, "T=1": 0.66}},
    "introllm": {
        0: {"greedy": 0.8, "T=1": 0.62, "learned": 0.64},
        1: {"greedy": 0.8, "T=1": 0.61, "learned": 0.66},
        2: {"greedy": 0.8, "T=1": 0.58, "learned": 0.6},
    },
}


def test_interval_matches_scipy_and_one_seed_has_none():
    values = [0.61, 0.67, 0.58, 0.7]
    interval = mean_interval(values)
    low, high = scipy_interval(values)
    assert interval.mean == pytest.approx(np.mean(values))
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=1e-12)
    assert interval.std == pytest.approx(np.std(values, ddof=1))
    single = mean_interval([0.4])
    assert single.n == 1 and single.low is None and single.high is None
    diffs, paired = paired_interval({0: 0.7, 1: 0.76, 2: 0.66, 5: 0.9}, {0: 0.6, 1: 0.65, 2: 0.55})
    assert diffs == pytest.approx({0: 0.1, 1: 0.11, 2: 0.11})  # seed 5 has no partner
    assert paired.mean == pytest.approx(np.mean([0.1, 0.11, 0.11]))


def test_comparison_report_numbers_statement_and_plots(tmp_path):
    root = tmp_path / "cmp"
    write_comparison(root, ACCURACIES, CONTROLLERS)
    report = write_comparison_report(root)
    results = json.loads((root / "results.json").read_text())
    assert results == json.loads(json.dumps(report.results.to_dict()))
    assert results["best_fixed_arm"] == "fixed-1.0"  # the higher of the two fixed arms, not TAMPO

    for arm, per_seed in ACCURACIES.items():
        values = [per_seed[s]["T=1"] for s in (0, 1, 2)]
        summary = results["arms"][arm]["final_accuracy"]
        assert summary["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert (summary["ci_low"], summary["ci_high"]) == pytest.approx(scipy_interval(values), abs=1e-12)
        assert summary["mean"] == pytest.approx(
            np.mean([v["final_accuracy"] for v in results["arms"][arm]["seeds"].values()])
        )
        greedy = results["arms"][arm]["evaluation"]["greedy"]["avg@4"]
        assert greedy["mean"] == pytest.approx(np.mean([per_seed[s]["greedy"] for s in (0, 1, 2)]))

    tampo = results["arms"]["tampo"]["vs_best_fixed"]
    diffs = [ACCURACIES["tampo"][s]["T=1"] - ACCURACIES["fixed-1.0"][s]["T=1"] for s in (0, 1, 2)]
    assert tampo["mean"] == pytest.approx(np.mean(diffs), abs=1e-12)
    assert (tampo["ci_low"], tampo["ci_high"]) == pytest.approx(scipy_interval(diffs), abs=1e-12)
    assert results["arms"]["fixed-1.0"]["vs_best_fixed"] is None
    learned = results["arms"]["introllm"]["evaluation"]["learned"]["avg@4"]["mean"]
    assert learned == pytest.approx(np.mean([0.64, 0.66, 0.6]))

    # the statement follows the numbers: TAMPO's differences are all +0.10..0.11 -> the interval excludes 0;
    # IntroLLM's (+0.02, -0.04, +0.03) -> not distinguishable; fixed-1.0 was picked among two fixed arms
    statement = results["statement"]
    low, high = scipy_interval(diffs)
    assert f"tampo is {np.mean(diffs):.3f} above fixed-1.0, 95% CI [{low:+.3f}, {high:+.3f}]" in statement
    assert "better than fixed-1.0 at 3 seeds" in statement
    intro_diffs = [ACCURACIES["introllm"][s]["T=1"] - ACCURACIES["fixed-1.0"][s]["T=1"] for s in (0, 1, 2)]
    assert f"introllm is {abs(np.mean(intro_diffs)):.3f} above fixed-1.0" in statement
    assert "introllm" in statement and "not distinguishable at 3 seeds" in statement
    assert "fixed-0.6 is 0.100 below fixed-1.0" in statement and "worse than fixed-1.0" in statement
    assert "chosen among 2 fixed arms" in statement

    markdown = (root / "report.md").read_text()
    tampo_row = next(line for line in markdown.splitlines() if line.startswith("| tampo |"))
    assert f"| {np.mean([0.7, 0.76, 0.66]):.3f} |" in tampo_row and f"| {np.mean(diffs):+.3f} |" in tampo_row
    for name in (
        "reward_accuracy.png",
        "temperature.png",
        "tampo_distribution.png",
        "introspective_tau_entropy.png",
        "evaluation.png",
    ):
        assert (root / name).is_file() and (root / name).stat().st_size > 5000, name
        assert f"]({name})" in markdown


def test_one_seed_says_no_interval(tmp_path):
    one_seed = {arm: {0: per_seed[0]} for arm, per_seed in ACCURACIES.items() if arm in ("fixed-1.0", "tampo")}
    write_comparison(tmp_path / "cmp", one_seed, CONTROLLERS)
    results = collect_results(tmp_path / "cmp")
    assert results.arms["tampo"].final_accuracy.low is None
    _, rows = summary_rows(results)
    assert rows[1][:5] == ["tampo", "tampo", "1", "0.700", "n=1, no interval"]
    assert rows[1][5:] == ["+0.100", "n=1, no interval"]
    assert "one paired seed: there is no interval, so this does not say which is better" in results.statement
    assert "CI" not in results.statement


def test_missing_runs_are_left_out_and_named(tmp_path):
    write_comparison(tmp_path / "cmp", ACCURACIES, CONTROLLERS)
    (run_folder(tmp_path / "cmp", "tampo", 2) / EVALUATION_FILE).unlink()
    results = collect_results(tmp_path / "cmp")
    assert results.missing_runs == [["tampo", 2]]
    assert results.arms["tampo"].final_accuracy.n == 2
    assert results.arms["tampo"].vs_best_fixed.differences.keys() == {"0", "1"}  # pairs only
    assert "1 run(s) have no evaluation yet" in results.statement


def test_report_names_the_base_weights_digest_and_says_when_runs_differ(tmp_path):
    arms = {arm: ACCURACIES[arm] for arm in ("fixed-1.0", "tampo")}
    write_comparison(tmp_path / "cmp", arms, CONTROLLERS)
    assert "Base weights" not in write_comparison_report(tmp_path / "cmp").markdown  # no run recorded a warm-up
    for arm in arms:
        for seed in range(3):
            digest = "b" * 64 if (arm, seed) == ("tampo", 2) else "a" * 64
            (run_folder(tmp_path / "cmp", arm, seed) / WARMUP_FILE).write_text(json.dumps({"weights_sha256": digest}))
    report = write_comparison_report(tmp_path / "cmp")
    assert report.results.warmup_sha256["tampo/seed-2"] == "b" * 64
    assert json.loads((tmp_path / "cmp" / "results.json").read_text())["warmup_sha256"]["fixed-1.0/seed-0"] == "a" * 64
    assert "Base weights differ between runs (SHA-256 of the warmed-up tiny model" in report.markdown
    assert f"`{'b' * 16}` (tampo/seed-2)" in report.markdown
    (run_folder(tmp_path / "cmp", "tampo", 2) / WARMUP_FILE).unlink()
    markdown = write_comparison_report(tmp_path / "cmp").markdown
    assert f"SHA-256 `{'a' * 16}` in 5 of the 6 runs (the others recorded none)" in markdown


def test_best_fixed_arm_ignores_other_controllers():
    def arm(controller: str, mean: float | None) -> ArmSummary:
        if mean is None:
            return ArmSummary(controller, {}, seeds={})
        seed = SeedResult(mean, {}, {}, TrainingSummary.of_run([]))
        return ArmSummary(controller, {}, seeds={"0": seed}, final_accuracy=mean_interval([mean]))

    arms = {
        "tampo": arm("tampo", 0.9),
        "fixed-a": arm("fixed", 0.5),
        "fixed-b": arm("fixed", 0.7),
        "fixed-c": arm("fixed", None),
    }
    assert best_fixed_arm(arms) == "fixed-b"
    assert best_fixed_arm({"tampo": arms["tampo"]}) is None


def test_run_report_plots_a_training_run(tmp_path):
    write_run(tmp_path, "tampo", 0, {"T=1": 0.5}, "tampo")
    folder = run_folder(tmp_path, "tampo", 0)
    made = write_report(folder)
    names = {p.name for p in made}
    assert {"report.md", "training.png", "tampo_distribution.png"} <= names
    assert all(p.stat().st_size > 0 for p in made)
    assert "held-out accuracy (in-training evaluation): 0.400 → 0.520" in (folder / "report.md").read_text()
    with pytest.raises(FileNotFoundError, match="neither a comparison folder"):
        write_report(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no metrics\.jsonl"):
        write_run_report(tmp_path)
    assert math.isfinite(json.loads((folder / "metrics.jsonl").read_text().splitlines()[1])["reward"])


def test_run_evaluation_reads_and_writes_evaluation_json_unchanged(tmp_path):
    from kelvin.experiments.results import RunEvaluation

    write_comparison(tmp_path / "cmp", ACCURACIES, CONTROLLERS)
    path = run_folder(tmp_path / "cmp", "introllm", 1) / EVALUATION_FILE
    evaluation = RunEvaluation.read(path)
    assert evaluation is not None and set(evaluation.results) == {"greedy", "T=1", "learned"}
    assert evaluation.results["learned"].metrics["avg@4"] == pytest.approx(0.66)
    assert evaluation.to_dict() == json.loads(path.read_text())
    assert RunEvaluation.read(tmp_path / "absent.json") is None
