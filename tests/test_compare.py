"""`kelvin compare` end to end on the warmed-up tiny model: two arms x two seeds, a few steps each.

The numbers of the report are checked against independent computations from the raw per-problem counts
(scipy.special.comb for pass@k, scipy.stats.t.interval for the intervals), resuming skips finished runs, and arms
that change more than the controller are rejected.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import special, stats

from kelvin.cli import main
from kelvin.config import ConfigError
from kelvin.experiments.recipe import load_comparison
from kelvin.experiments.runner import ComparisonError, check_run_config, plan_runs, run_comparison

RECIPE = {
    "name": "test",
    "seeds": [0, 1],
    "evaluation": {"temperatures": [0, 1.0], "primary": "T=1.0", "k": 3, "size": 12, "batch_size": 64},
    "base": {
        "task": {"eval_size": 12},
        "sampling": {"num_generations": 4, "max_completion_length": 40},
        "optim": {"learning_rate": 1e-3},
        "trainer": {
            "steps": 3,
            "prompts_per_step": 8,
            "micro_batch_size": 32,
            "eval_every": 2,
            "save_every": 0,
            "tensorboard": False,
            "log_completions": 0,
        },
    },
    "arms": {
        "fixed-1.0": {"controller": {"name": "fixed"}, "sampling": {"temperature": 1.0}},
        "fixed-0.8": {"controller": {"name": "fixed"}, "sampling": {"temperature": 0.8}},
    },
}


def write_recipe(folder: Path, recipe: dict) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, warm_model_dir):
    """One finished comparison, shared by the tests below (training is the expensive part)."""
    root = tmp_path_factory.mktemp("compare")
    recipe = write_recipe(root, RECIPE)
    comparison = load_comparison(recipe)
    outcome = run_comparison(comparison, root / "out", progress=False, quiet=True)
    return recipe, comparison, outcome


def unbiased_pass_at_k(n: int, c: int, k: int) -> float:
    return 1.0 - special.comb(n - c, k, exact=True) / special.comb(n, k, exact=True)


def t_interval(values: list[float]) -> tuple[float, float]:
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    return float(low), float(high)


def test_comparison_writes_consistent_report(finished):
    _, comparison, outcome = finished
    out = outcome.output_dir
    assert sorted(outcome.trained) == sorted((a.name, s) for a in comparison.arms for s in comparison.seeds)
    for name in ("report.md", "results.json", "reward_accuracy.png", "temperature.png", "evaluation.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = json.loads((out / "results.json").read_text())
    assert results["primary"] == {"endpoint": "T=1", "setting": "T=1", "metric": "avg@3"}
    report = (out / "report.md").read_text()

    per_seed: dict[str, dict[int, float]] = {}
    for arm in ("fixed-1.0", "fixed-0.8"):
        info = results["arms"][arm]
        per_seed[arm] = {}
        for seed in (0, 1):
            evaluation = json.loads((out / "runs" / arm / f"seed-{seed}" / "evaluation.json").read_text())
            entry = evaluation["results"]["T=1"]["tasks"]["arithmetic"]
            counts = entry["correct_counts"]
            assert len(counts) == 12
            # avg@k and pass@k recomputed from the raw counts
            avg = sum(counts) / (3 * len(counts))
            assert info["seeds"][str(seed)]["final_accuracy"] == pytest.approx(avg, abs=1e-12)
            pass3 = np.mean([unbiased_pass_at_k(3, c, 3) for c in counts])
            pass2 = np.mean([unbiased_pass_at_k(3, c, 2) for c in counts])
            assert info["seeds"][str(seed)]["evaluation"]["T=1"]["pass@3"] == pytest.approx(pass3, abs=1e-12)
            assert info["seeds"][str(seed)]["evaluation"]["T=1"]["pass@2"] == pytest.approx(pass2, abs=1e-12)
            greedy = evaluation["results"]["greedy"]["tasks"]["arithmetic"]["correct_counts"]
            assert all(c in (0, 3) for c in greedy)  # one greedy decode, repeated k times
            per_seed[arm][seed] = avg
        values = list(per_seed[arm].values())
        # the table's mean is the mean of the per-seed results, with an independently computed t-interval
        assert info["final_accuracy"]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        if np.std(values) > 0:
            low, high = t_interval(values)
            assert info["final_accuracy"]["ci_low"] == pytest.approx(low, abs=1e-9)
            assert info["final_accuracy"]["ci_high"] == pytest.approx(high, abs=1e-9)
        row = next(line for line in report.splitlines() if line.startswith(f"| {arm} |"))
        assert f"| {np.mean(values):.3f} |" in row

    # the best fixed arm has the higher mean (the first in recipe order on a tie); the other is paired with it
    means = {arm: np.mean(list(values.values())) for arm, values in per_seed.items()}
    best = "fixed-1.0" if means["fixed-1.0"] >= means["fixed-0.8"] else "fixed-0.8"
    other = "fixed-0.8" if best == "fixed-1.0" else "fixed-1.0"
    assert results["best_fixed_arm"] == best
    assert results["arms"][best]["vs_best_fixed"] is None
    diffs = [per_seed[other][s] - per_seed[best][s] for s in (0, 1)]
    paired = results["arms"][other]["vs_best_fixed"]
    assert paired["reference"] == best
    assert paired["mean"] == pytest.approx(np.mean(diffs), abs=1e-12)
    assert paired["n"] == 2
    if np.std(diffs) > 0:
        low, high = t_interval(diffs)
        assert paired["ci_low"] == pytest.approx(low, abs=1e-9)
        assert paired["ci_high"] == pytest.approx(high, abs=1e-9)
        verdict = "not distinguishable at 2 seeds" if low <= 0 <= high else "the interval excludes 0"
        assert verdict in results["statement"]
    assert results["statement"] in report
    # the training curves come from the runs' metrics: 3 steps, held-out accuracy at steps 0, 2 and 3
    rows = [
        json.loads(line) for line in (out / "runs" / "fixed-0.8" / "seed-0" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 2, 3]
    temperatures = [r["temperature/mean"] for r in rows if "temperature/mean" in r]
    assert temperatures == pytest.approx([0.8, 0.8, 0.8])  # the arm's temperature reached its runs


def test_report_gives_the_warmed_up_base_models_digest(finished, warm_model_dir):
    """Each run records the warm-up it started from, and the report names its weights digest (the same base model on
    every machine, or a report that says it is not)."""
    _, comparison, outcome = finished
    digest = json.loads((warm_model_dir / "warmup.json").read_text())["weights_sha256"]
    results = json.loads((outcome.output_dir / "results.json").read_text())
    runs = {f"{arm.name}/seed-{seed}" for arm in comparison.arms for seed in comparison.seeds}
    assert results["warmup_sha256"] == dict.fromkeys(runs, digest)
    report = (outcome.output_dir / "report.md").read_text()
    assert f"SHA-256 `{digest[:16]}` in every run" in report
    assert "bitwise reproducible on CPU with one thread" in report


def test_resume_skips_finished_runs_and_reevaluates_on_new_settings(finished, tmp_path):
    recipe, comparison, outcome = finished
    out = outcome.output_dir
    summaries = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed-*/summary.json")}
    evaluations = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/seed-*/evaluation.json")}
    assert len(summaries) == 4 and len(evaluations) == 4

    again = run_comparison(comparison, out, progress=False, quiet=True)
    assert again.trained == [] and again.evaluated == []
    assert sorted(again.skipped) == sorted((a.name, s) for a in comparison.arms for s in comparison.seeds)
    assert {p: p.stat().st_mtime_ns for p in summaries} == summaries
    assert {p: p.stat().st_mtime_ns for p in evaluations} == evaluations

    # an interrupted comparison (one run lost entirely) continued with new evaluation settings: only that run is
    # trained again, and every final model is re-evaluated
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "runs" / "fixed-0.8" / "seed-1")
    wider = load_comparison(recipe, ["evaluation.k=2"])
    resumed = run_comparison(wider, copy, progress=True, quiet=False)  # with the progress bar, as on a terminal
    assert resumed.trained == [("fixed-0.8", 1)]
    assert sorted(resumed.skipped) == [("fixed-0.8", 0), ("fixed-1.0", 0), ("fixed-1.0", 1)]
    assert len(resumed.evaluated) == 4
    assert json.loads((copy / "results.json").read_text())["primary"]["metric"] == "avg@2"


def test_finished_run_with_other_settings_is_an_error(finished):
    recipe, _, outcome = finished
    other = load_comparison(recipe, ["optim.learning_rate=5e-4"])
    spec = plan_runs(other, outcome.output_dir)[0]
    with pytest.raises(ComparisonError, match=r"optim\.learning_rate.*new --output-dir"):
        check_run_config(spec)


def test_cli_compare_and_report_on_a_finished_folder(finished, capsys):
    recipe, _, outcome = finished
    assert main(["compare", str(recipe), "--output-dir", str(outcome.output_dir), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "fixed-1.0" in printed and "fixed-0.8" in printed and "report.md" in printed
    (outcome.output_dir / "report.md").unlink()
    assert main(["report", str(outcome.output_dir)]) == 0
    assert (outcome.output_dir / "report.md").is_file()
    run = outcome.output_dir / "runs" / "fixed-0.8" / "seed-0"
    assert main(["report", str(run)]) == 0
    assert (run / "training.png").is_file()


def test_arm_overriding_a_non_controller_key_is_rejected(tmp_path):
    bad = json.loads(json.dumps(RECIPE))
    bad["arms"]["fixed-0.8"]["trainer"] = {"steps": 5}
    bad["arms"]["fixed-0.8"]["sampling"]["top_p"] = 0.9
    with pytest.raises(ConfigError) as err:
        load_comparison(write_recipe(tmp_path, bad))
    message = str(err.value)
    assert "Arm 'fixed-0.8'" in message and "'trainer.steps'" in message and "'sampling.top_p'" in message
    assert "allow_non_controller_overrides" in message
    assert "sampling.temperature" not in re.findall(r"'([a-z_.]+)'", message)  # the temperature is allowed

    bad["allow_non_controller_overrides"] = True
    allowed = load_comparison(write_recipe(tmp_path, bad))
    assert allowed.config(allowed.arms[1], 0).trainer.steps == 5


def test_recipe_errors_name_the_problem(tmp_path):
    cases = [
        ({"evaluation": {"primary": "T=0.7"}}, "evaluation.primary='T=0.7' is not one of evaluation.temperatures"),
        ({"seeds": [0, 0]}, "seeds=[0, 0]"),
        ({"arms": {"bad name": {}}}, "Arm name 'bad name'"),
        ({"arms": {"x": {"controller": {"name": "nope"}}}}, "Arm 'x': controller.name='nope'"),
        ({"evaluation": {"kk": 3}}, "evaluation.kk"),
        ({"extra": 1}, "Unknown comparison recipe key"),
    ]
    for change, expected in cases:
        recipe = {**json.loads(json.dumps(RECIPE)), **change}
        if "evaluation" in change:
            recipe["evaluation"] = {**RECIPE["evaluation"], **change["evaluation"]}
        with pytest.raises(ConfigError, match=re.escape(expected)):
            load_comparison(write_recipe(tmp_path, recipe))


def test_seeds_and_overrides_reach_every_run(tmp_path):
    comparison = load_comparison(
        write_recipe(tmp_path, RECIPE),
        ["trainer.steps=7", "evaluation.k=5", "arms.fixed-0.8.sampling.temperature=0.7"],
        seeds=3,
    )
    assert comparison.seeds == [0, 1, 2] and comparison.evaluation.k == 5
    runs = plan_runs(comparison, tmp_path / "out")
    assert [(r.arm.name, r.seed) for r in runs][:3] == [("fixed-1.0", 0), ("fixed-0.8", 0), ("fixed-1.0", 1)]
    for run in runs:
        assert run.config.trainer.steps == 7
        assert run.config.trainer.seed == run.seed
        assert run.config.controller.tampo.seed == run.seed and run.config.controller.introspective.seed == run.seed
        assert run.config.task.seed == 1234 + run.seed  # seed s's data order, the same in every arm (paired)
        assert run.config.task.eval_seed == 1234  # every run is evaluated on the same held-out problems
        assert run.folder == tmp_path / "out" / "runs" / run.arm.name / f"seed-{run.seed}"
    assert runs[1].config.sampling.temperature == 0.7 and runs[0].config.sampling.temperature == 1.0
    # a new arm from the command line; its name holds dots like the recipe's own arms
    more = load_comparison(
        write_recipe(tmp_path, RECIPE),
        ["arms.fixed-1.2.controller.name=fixed", "arms.fixed-1.2.sampling.temperature=1.2"],
    )
    assert [a.name for a in more.arms] == ["fixed-1.0", "fixed-0.8", "fixed-1.2"]
    assert more.config(more.arms[2], 0).sampling.temperature == 1.2
    with pytest.raises(ConfigError, match="must name an arm and a config key"):
        load_comparison(write_recipe(tmp_path, RECIPE), ["arms.fixed-1.2=1"])


PAPERS = Path(__file__).resolve().parent.parent / "recipes" / "papers"


def test_paper_recipes_encode_the_papers_settings(tmp_path):
    overrides = [f"model.path={tmp_path}"]  # the real model folders are not here; any folder passes validation
    table1 = load_comparison(PAPERS / "tampo-table1.yaml", overrides)
    assert [a.name for a in table1.arms] == ["fixed-0.9", "fixed-1.5", "linear-0.9-1.5", "tampo"]
    configs = {a.name: table1.config(a, 0) for a in table1.arms}
    for config in configs.values():
        assert config.trainer.steps == 200 and config.sampling.max_completion_length == 6144
        assert config.optim.learning_rate == 1e-6 and config.optim.lr_scheduler == "cosine"
        assert config.optim.min_lr_ratio == 0.1
    assert configs["fixed-0.9"].sampling.temperature == 0.9 and configs["fixed-1.5"].sampling.temperature == 1.5
    schedule = configs["linear-0.9-1.5"].controller.schedule
    assert (schedule.kind, schedule.start, schedule.end) == ("linear", 0.9, 1.5)
    tampo = configs["tampo"].controller.tampo
    assert tampo.candidates == pytest.approx([0.6 + 0.1 * i for i in range(10)])
    assert (tampo.ema_alpha, tampo.top_p) == (0.05, 0.7)
    assert table1.evaluation.tasks == ["aime24", "math500", "amc23", "minerva_math", "olympiadbench"]
    assert table1.evaluation.k == 8

    alpha = load_comparison(PAPERS / "tampo-alpha.yaml", overrides)
    assert [table1_arm.controller for table1_arm in alpha.arms] == ["tampo"] * 3
    assert [alpha.config(a, 0).controller.tampo.ema_alpha for a in alpha.arms] == [0.01, 0.05, 0.10]
    top_p = load_comparison(PAPERS / "tampo-top-p.yaml", overrides)
    assert [top_p.config(a, 0).controller.tampo.top_p for a in top_p.arms] == [0.9, 0.7, 0.5, 0.0]
    for variant in (alpha, top_p):
        assert variant.base == table1.base  # only the TAMPO arms differ from Table 1

    intro = load_comparison(PAPERS / "introllm-math.yaml", overrides)
    assert [a.controller for a in intro.arms] == ["fixed", "ead", "tampo", "introspective"]
    assert intro.evaluation.learned_temperature and intro.evaluation.k == 8


def test_demo_runs_every_arm_and_evaluates_the_learned_temperature(tmp_path, warm_model_dir, capsys):
    """`kelvin demo` shrunk to one step: all four arms run, IntroLLM is also evaluated with its own temperature."""
    out = tmp_path / "demo"
    small = [
        "--steps=1",
        "--seeds=1",
        "--no-progress",
        f"--output-dir={out}",
        "trainer.prompts_per_step=4",
        "sampling.num_generations=4",
        "trainer.micro_batch_size=16",
        "trainer.eval_every=0",
        "trainer.save_every=0",
        "trainer.tensorboard=false",
        "task.eval_size=6",
        "evaluation.size=6",
        "evaluation.k=2",
        "evaluation.token_samples=4",
    ]
    assert main(["demo", *small]) == 0
    printed = capsys.readouterr().out
    for arm in ("fixed-1.0", "linear", "tampo", "introllm"):
        assert f"\n{arm} " in printed
    results = json.loads((out / "results.json").read_text())
    assert results["arms"]["introllm"]["seeds"]["0"]["evaluation"]["learned"]["avg@2"] >= 0
    assert "learned" not in results["arms"]["tampo"]["seeds"]["0"]["evaluation"]
    samples = json.loads((out / "runs" / "introllm" / "seed-0" / "token_samples.json").read_text())
    assert len(samples["temperature"]) == len(samples["entropy_at_T1"]) == len(samples["token"]) > 0
    assert all(0.5 <= t <= 1.5 for t in samples["temperature"])  # the head's [tau_min, tau_max]
    assert all(e >= 0 for e in samples["entropy_at_T1"])
    for name in ("tampo_distribution.png", "introspective_tau_entropy.png"):
        assert (out / name).is_file()


def _run_rows(folder: Path) -> list[dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def _untimed(tree: object) -> object:
    """The tree without its wall-time fields, which differ between any two runs."""
    if isinstance(tree, dict):
        return {k: _untimed(v) for k, v in tree.items() if k not in ("seconds", "train_seconds")}
    return tree


def test_parallel_jobs_give_the_same_runs_and_overlap(tmp_path, warm_model_dir):
    recipe = {**RECIPE, "seeds": [0]}
    # 8 steps (about 5 s a run): longer than the gap between the two spawned workers becoming ready (torch and
    # Kelvin imported in each), so the second worker takes the second run instead of the first worker taking both.
    # With 2 steps (1.4 s a run) a fresh clone once saw the runs one after the other.
    recipe["base"] = {**RECIPE["base"], "trainer": {**RECIPE["base"]["trainer"], "steps": 8, "torch_threads": 1}}
    comparison = load_comparison(write_recipe(tmp_path, recipe))
    serial = run_comparison(comparison, tmp_path / "serial", progress=False, quiet=True)
    parallel = run_comparison(comparison, tmp_path / "parallel", progress=False, quiet=True, jobs=2)
    assert sorted(parallel.trained) == sorted(serial.trained) == [("fixed-0.8", 0), ("fixed-1.0", 0)]
    assert sorted(parallel.evaluated) == sorted(serial.evaluated)
    serial_runs = {spec.arm.name: spec for spec in plan_runs(comparison, tmp_path / "serial")}
    spans = []
    for spec in plan_runs(comparison, tmp_path / "parallel"):
        twin = serial_runs[spec.arm.name]
        assert _run_rows(spec.folder) == _run_rows(twin.folder), spec.label
        a = json.loads((spec.folder / "evaluation.json").read_text())
        b = json.loads((twin.folder / "evaluation.json").read_text())
        assert _untimed(a["results"]) == _untimed(b["results"]), spec.label
        spans.append(((spec.folder / "config.yaml").stat().st_mtime, (spec.folder / "summary.json").stat().st_mtime))
    # The two runs were in flight at the same time: each started before the other finished.
    (start_a, end_a), (start_b, end_b) = spans
    assert start_a < end_b and start_b < end_a, spans
    parallel_arms, serial_arms = (
        json.loads((tmp_path / d / "results.json").read_text())["arms"] for d in ("parallel", "serial")
    )
    assert _untimed(parallel_arms) == _untimed(serial_arms)


def test_selection_chooses_on_validation_at_its_own_seeds_and_the_arm_trains_afresh(tmp_path, warm_model_dir):
    """selection: the fixed arm at each candidate T, at seeds disjoint from the comparison's, scored on the validation
    split only; the chosen T is then trained afresh at the comparison's seed (no selection run is reused)."""
    recipe = json.loads(json.dumps(RECIPE))
    recipe["seeds"] = [0]
    recipe["evaluation"] = {"primary": "greedy", "temperatures": [0.8, 1.0], "k": 2, "size": 12, "batch_size": 64}
    recipe["selection"] = {"arm": "fixed-1.0", "temperatures": [0.8, 1.0], "seeds": [100]}
    recipe["base"]["trainer"]["steps"] = 2
    out = tmp_path / "out"
    outcome = run_comparison(load_comparison(write_recipe(tmp_path, recipe)), out, progress=False, quiet=True)
    selection = json.loads((out / "selection" / "selection.json").read_text())
    scores = {label: per_seed["100"] for label, per_seed in selection["scores"].items()}
    for label, folder in (("T=0.8", "fixed-1.0-T0.8"), ("T=1", "fixed-1.0-T1")):
        run = out / "selection" / "runs" / folder / "seed-100"
        evaluation = json.loads((run / "evaluation.json").read_text())
        assert evaluation["results"] == {}  # never evaluated on the test split
        assert scores[label] == evaluation["validation"]["greedy"]["metrics"]["avg@2"]
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["trainer"]["seed"] == 100 and config["task"]["eval_split"] == "validation"
    chosen = 0.8 if scores["T=0.8"] >= scores["T=1"] else 1.0
    assert selection["chosen_temperature"] == chosen == outcome.selection.chosen_temperature
    compared = yaml.safe_load((out / "runs" / "fixed-1.0" / "seed-0" / "config.yaml").read_text())
    assert compared["sampling"]["temperature"] == chosen and compared["trainer"]["seed"] == 0
    assert compared["task"]["eval_split"] == "test"
    results = json.loads((out / "results.json").read_text())
    assert results["reference"] == "selection" and results["best_fixed_arm"] == "fixed-1.0"
    assert results["selection"]["chosen_temperature"] == chosen
    assert f"The reference is fixed-1.0 at T = {chosen:g}" in results["statement"]


def test_tuned_on_a_task_without_a_validation_split_is_refused_before_training(tmp_path):
    recipe = json.loads(json.dumps(RECIPE))
    recipe["base"]["task"] = {"name": "gsm8k", "eval_size": 12}
    recipe["evaluation"] = {**RECIPE["evaluation"], "primary": "tuned"}
    out = tmp_path / "out"
    with pytest.raises(ComparisonError, match=r"the 'tuned' endpoint needs a validation split.*\['gsm8k'\]"):
        run_comparison(load_comparison(write_recipe(tmp_path, recipe)), out, progress=False, quiet=True)
    assert not (out / "runs").exists()
