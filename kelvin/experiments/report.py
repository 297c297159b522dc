"""`kelvin report D`: the report of a comparison folder (or of one training run) from the files it holds.

A comparison folder (written by `kelvin compare`, see kelvin/experiments/runner.py) gets:

    report.md     summary table (final accuracy per arm, mean and 95% t-interval over seeds, paired difference to the
                  best fixed-temperature arm), per-seed numbers, the evaluation at every temperature, a training
                  table, and a one-paragraph statement of the result generated from those numbers
    results.json  every number: per arm, per seed, per evaluation setting (the table's means are means of these)
    *.png         reward / held-out accuracy / temperature against step per arm (bands over seeds), TAMPO's
                  meta-policy as a heat map, IntroLLM's tau against token entropy, evaluation bars

A run folder (metrics.jsonl) gets training.png (reward, accuracy, temperature against step), plus the TAMPO and
IntroLLM plots when the run logged their metrics, and a short report.md.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from kelvin.controllers import is_baseline
from kelvin.eval.evaluation import setting_label
from kelvin.experiments import plots
from kelvin.experiments.recipe import COMPARISON_FILE, EVALUATION_FILE, TOKEN_SAMPLES_FILE, run_folder
from kelvin.experiments.stats import mean_interval, paired_interval
from kelvin.rl.run_folder import read_jsonl

CONFIDENCE = 0.95
PROB_PREFIX = "temperature/prob/"


@dataclass
class ComparisonReport:
    root: Path
    results: dict[str, Any]
    markdown: str
    summary_text: str  # the summary table as aligned plain text, for the terminal
    files: list[Path] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.root / "report.md"


# --------------------------------------------------------------------------------------------------------------------
# Reading run folders
# --------------------------------------------------------------------------------------------------------------------


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    if not path.is_file():
        return []
    return read_jsonl(path)  # skips a torn last line (a killed write, a full disk)


def series(rows: Sequence[dict[str, Any]], key: str) -> dict[int, float]:
    """step -> value of one metric (finite values only; a resumed run's rewritten steps keep their last value)."""
    out: dict[int, float] = {}
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[int(row["step"])] = float(value)
    return out


def candidate_distribution(rows: Sequence[dict[str, Any]]) -> tuple[np.ndarray, list[float], np.ndarray] | None:
    """TAMPO's logged meta-policy (temperature/prob/<T>) as (steps[S], candidates[K], probs[K, S]); None if absent."""
    keys = sorted(
        {k for row in rows for k in row if k.startswith(PROB_PREFIX)}, key=lambda k: float(k[len(PROB_PREFIX) :])
    )
    if not keys:
        return None
    logged = [row for row in rows if all(k in row for k in keys)]
    if not logged:
        return None
    steps = np.array([int(row["step"]) for row in logged])
    probs = np.array([[float(row[k]) for row in logged] for k in keys])
    return steps, [float(k[len(PROB_PREFIX) :]) for k in keys], probs


def mean_distribution(
    parts: Sequence[tuple[np.ndarray, list[float], np.ndarray]],
) -> tuple[np.ndarray, list[float], np.ndarray] | None:
    """The seeds' distributions averaged over the steps all of them logged (same candidates required)."""
    parts = [p for p in parts if p is not None]
    if not parts or any(p[1] != parts[0][1] for p in parts):
        return parts[0] if parts else None
    common = sorted(set.intersection(*(set(p[0].tolist()) for p in parts)))
    if not common:
        return None
    stacked = [p[2][:, [p[0].tolist().index(s) for s in common]] for p in parts]
    return np.array(common), parts[0][1], np.mean(stacked, axis=0)


def tail_mean(values: dict[int, float], fraction: float = 0.1) -> float | None:
    """Mean over the last `fraction` of the logged steps (at least one)."""
    if not values:
        return None
    steps = sorted(values)
    last = steps[-max(1, round(len(steps) * fraction)) :]
    return float(np.mean([values[s] for s in last]))


# --------------------------------------------------------------------------------------------------------------------
# Results: every number of the report
# --------------------------------------------------------------------------------------------------------------------


def _interval_dict(values: Sequence[float]) -> dict[str, Any]:
    return mean_interval(list(values), CONFIDENCE).to_dict()


def _training_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    reward = series(rows, "reward")
    held_out = series(rows, "eval/accuracy")
    temperature = series(rows, "temperature/mean")
    seconds = series(rows, "time/step")
    return {
        "steps": max(reward) if reward else 0,
        "final_reward": tail_mean(reward),
        "held_out_accuracy_first": held_out[min(held_out)] if held_out else None,
        "held_out_accuracy_last": held_out[max(held_out)] if held_out else None,
        "mean_temperature": float(np.mean(list(temperature.values()))) if temperature else None,
        "train_seconds": float(sum(seconds.values())) if seconds else None,
    }


def collect_results(root: Path) -> dict[str, Any]:
    """Read comparison.json, every run's evaluation.json and metrics.jsonl; compute every number of the report."""
    comparison = json.loads((root / COMPARISON_FILE).read_text())
    settings = comparison["evaluation"]
    primary = setting_label(settings["primary_temperature"])
    metric = f"avg@{settings['k']}"
    arms: dict[str, Any] = {}
    missing: list[list[Any]] = []
    for arm, arm_info in comparison["arms"].items():
        per_seed: dict[str, Any] = {}
        for seed in comparison["seeds"]:
            folder = run_folder(root, arm, seed)
            evaluation_path = folder / EVALUATION_FILE
            evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.is_file() else None
            if evaluation is None or evaluation.get("settings") != settings:
                missing.append([arm, seed])
                continue
            evaluated = {label: entry["metrics"] for label, entry in evaluation["results"].items()}
            per_seed[str(seed)] = {
                "final_accuracy": evaluated[primary][metric],
                "evaluation": evaluated,
                "evaluation_by_task": {label: entry["tasks"] for label, entry in evaluation["results"].items()},
                "training": _training_summary(read_metrics(folder)),
            }
        arms[arm] = {"controller": arm_info["controller"], "overrides": arm_info["overrides"], "seeds": per_seed}
        if per_seed:
            arms[arm]["final_accuracy"] = _interval_dict([s["final_accuracy"] for s in per_seed.values()])
            arms[arm]["evaluation"] = _evaluation_summary(per_seed)
            arms[arm]["training"] = {
                key: _mean_or_none([s["training"][key] for s in per_seed.values()])
                for key in next(iter(per_seed.values()))["training"]
            }
    best = best_fixed_arm(arms)
    for arm, info in arms.items():
        if not info["seeds"] or best is None or arm == best:
            info["vs_best_fixed"] = None
            continue
        diffs, interval = paired_interval(
            {int(s): v["final_accuracy"] for s, v in info["seeds"].items()},
            {int(s): v["final_accuracy"] for s, v in arms[best]["seeds"].items()},
            CONFIDENCE,
        )
        info["vs_best_fixed"] = (
            None
            if interval is None
            else {"reference": best, "differences": {str(s): d for s, d in diffs.items()}, **interval.to_dict()}
        )
    base = comparison["base"]
    results = {
        "name": comparison["name"],
        "description": comparison["description"],
        "confidence": CONFIDENCE,
        "primary": {"setting": primary, "metric": metric},
        "seeds": comparison["seeds"],
        "evaluation": settings,
        "setup": _setup(base),
        "best_fixed_arm": best,
        "arms": arms,
        "missing_runs": missing,
    }
    results["statement"] = statement(results)
    return results


def _mean_or_none(values: Sequence[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _evaluation_summary(per_seed: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """setting -> metric -> interval over the seeds that have it."""
    labels = dict.fromkeys(label for s in per_seed.values() for label in s["evaluation"])
    out: dict[str, dict[str, Any]] = {}
    for label in labels:
        names = dict.fromkeys(n for s in per_seed.values() for n in s["evaluation"].get(label, {}))
        out[label] = {
            name: _interval_dict(
                [s["evaluation"][label][name] for s in per_seed.values() if name in s["evaluation"].get(label, {})]
            )
            for name in names
        }
    return out


def best_fixed_arm(arms: dict[str, Any]) -> str | None:
    """The fixed-temperature arm with the highest mean final accuracy (the first one on a tie); None without one."""
    fixed = [
        (info["final_accuracy"]["mean"], -i, arm)
        for i, (arm, info) in enumerate(arms.items())
        if is_baseline(info["controller"]) and info["seeds"]
    ]
    return max(fixed)[2] if fixed else None


def _setup(base: dict[str, Any]) -> dict[str, Any]:
    from kelvin.config import KelvinConfig, build_section

    # built without validation: a report must not need the model folder (model.path) that trained the runs
    config = build_section(KelvinConfig, base)
    return {
        "model": config.model.path or config.model.tiny,
        "task": config.task.name,
        "steps": config.trainer.steps,
        "prompts_per_step": config.trainer.prompts_per_step,
        "num_generations": config.sampling.num_generations,
        "max_completion_length": config.sampling.max_completion_length,
        "learning_rate": config.optim.learning_rate,
        "loss_type": config.loss.loss_type,
    }


# --------------------------------------------------------------------------------------------------------------------
# Words and tables
# --------------------------------------------------------------------------------------------------------------------


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def _ci(info: dict[str, Any] | None, signed: bool = False) -> str:
    if info is None:
        return "—"
    if info["ci_low"] is None:
        return f"n={info['n']}, no interval"
    fmt = _signed if signed else (lambda v: f"{v:.3f}")
    return f"[{fmt(info['ci_low'])}, {fmt(info['ci_high'])}]"


def statement(results: dict[str, Any]) -> str:
    """One honest paragraph, generated from the numbers: each arm against the best fixed arm, with its interval."""
    arms = {a: i for a, i in results["arms"].items() if i["seeds"]}
    primary = results["primary"]
    setup = results["setup"]
    ev = results["evaluation"]
    size = f"{ev['size']}" if ev["size"] else "all"
    where = (
        f"{size} problems of each of {', '.join(ev['tasks'])} (unweighted mean)"
        if ev["tasks"]
        else f"{size} held-out problems of {setup['task']}"
    )
    opening = (
        f"Final accuracy is {primary['metric']} at {primary['setting']} on {where}, after {setup['steps']} steps of "
        f"{setup['prompts_per_step']} prompts x {setup['num_generations']} samples."
    )
    if not arms:
        return opening + " No run has finished its evaluation yet, so there is no result to state."
    best = results["best_fixed_arm"]
    sentences = [opening]
    if best is None:
        ranked = sorted(arms, key=lambda a: -arms[a]["final_accuracy"]["mean"])
        listing = ", ".join(f"{a} {arms[a]['final_accuracy']['mean']:.3f}" for a in ranked)
        sentences.append(
            f"There is no fixed-temperature arm, so nothing is compared with a fixed baseline ({listing})."
        )
        return " ".join(sentences)
    fixed = [a for a in arms if is_baseline(arms[a]["controller"])]
    reference = arms[best]["final_accuracy"]
    chosen = (
        f", chosen among {len(fixed)} fixed arms on this same evaluation, which flatters it" if len(fixed) > 1 else ""
    )
    sentences.append(f"The best fixed-temperature arm is {best} at {reference['mean']:.3f}{chosen}.")
    undecided = False
    for arm, info in arms.items():
        if arm == best or info["vs_best_fixed"] is None:
            continue
        d = info["vs_best_fixed"]
        direction = "above" if d["mean"] > 0 else "below" if d["mean"] < 0 else "level with"
        amount = f"{abs(d['mean']):.3f} {direction}" if d["mean"] != 0 else "level with"
        if d["ci_low"] is None:
            sentences.append(
                f"{arm} is {amount} {best} with one paired seed: there is no interval, so this does not say which is "
                "better."
            )
            undecided = True
        elif (d["ci_low"] > 0) or (d["ci_high"] < 0):
            verdict = "better than" if d["mean"] > 0 else "worse than"
            sentences.append(
                f"{arm} is {amount} {best}, 95% CI [{_signed(d['ci_low'])}, {_signed(d['ci_high'])}] over {d['n']} "
                f"paired seeds: {verdict} {best} at {d['n']} seeds (the interval excludes 0)."
            )
        else:
            sentences.append(
                f"{arm} is {amount} {best}, 95% CI [{_signed(d['ci_low'])}, {_signed(d['ci_high'])}]: not "
                f"distinguishable at {d['n']} seeds."
            )
            undecided = True
    if undecided:
        sentences.append(_width_note(arms))
    if results["missing_runs"]:
        sentences.append(f"{len(results['missing_runs'])} run(s) have no evaluation yet and are left out.")
    return " ".join(sentences)


def _width_note(arms: dict[str, Any]) -> str:
    """Why the intervals are as wide as they are: the t quantile at the number of paired seeds."""
    paired = [info["vs_best_fixed"]["n"] for info in arms.values() if info.get("vs_best_fixed")]
    n = min(paired) if paired else 0
    if n >= 2:
        t = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df=n - 1))
        return (
            f"With {n} seeds a 95% interval spans ±{t:.2f} standard errors of the per-seed differences; more seeds "
            "(--seeds) narrow it, more steps (--steps) let the arms drift further apart."
        )
    return "More seeds (--seeds) give intervals; more steps (--steps) let the arms drift further apart."


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths)), *(fmt.format(*r) for r in rows)])


def summary_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    primary = results["primary"]
    best = results["best_fixed_arm"]
    header = [
        "arm",
        "controller",
        "seeds",
        f"final accuracy ({primary['metric']}, {primary['setting']})",
        "95% CI",
        f"Δ vs best fixed ({best})" if best else "Δ vs best fixed",
        "95% CI of Δ",
    ]
    rows = []
    for arm, info in results["arms"].items():
        if not info["seeds"]:
            rows.append([arm, info["controller"], "0", "not evaluated", "—", "—", "—"])
            continue
        acc = info["final_accuracy"]
        if arm == best:
            delta, delta_ci = "reference", "—"
        elif info["vs_best_fixed"] is None:
            delta, delta_ci = "—", "—"
        else:
            delta, delta_ci = _signed(info["vs_best_fixed"]["mean"]), _ci(info["vs_best_fixed"], signed=True)
        rows.append([arm, info["controller"], str(acc["n"]), f"{acc['mean']:.3f}", _ci(acc), delta, delta_ci])
    return header, rows


def evaluation_rows(results: dict[str, Any], metric: str) -> tuple[list[str], list[list[str]]]:
    labels = _setting_order(results)
    header = ["arm", *labels]
    rows = []
    for arm, info in results["arms"].items():
        cells = [arm]
        for label in labels:
            entry = (info.get("evaluation") or {}).get(label, {}).get(metric)
            if entry is None:
                cells.append("—")
            elif entry["ci_low"] is None:
                cells.append(f"{entry['mean']:.3f}")
            else:
                cells.append(f"{entry['mean']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]")
        rows.append(cells)
    return header, rows


def _setting_order(results: dict[str, Any]) -> list[str]:
    labels = [setting_label(t) for t in results["evaluation"]["temperatures"]]
    extra = dict.fromkeys(
        label for info in results["arms"].values() for label in (info.get("evaluation") or {}) if label not in labels
    )
    return labels + list(extra)


def per_seed_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    seeds = [str(s) for s in results["seeds"]]
    header = ["arm", *[f"seed {s}" for s in seeds], "mean"]
    rows = []
    for arm, info in results["arms"].items():
        cells = [arm] + [f"{info['seeds'][s]['final_accuracy']:.3f}" if s in info["seeds"] else "—" for s in seeds]
        cells.append(f"{info['final_accuracy']['mean']:.3f}" if info["seeds"] else "—")
        rows.append(cells)
    return header, rows


def training_rows(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    header = [
        "arm",
        "train reward (last 10% of steps)",
        "held-out acc. before → after (in training)",
        "mean τ",
        "train time / run",
    ]
    rows = []
    for arm, info in results["arms"].items():
        t = info.get("training")
        if not t:
            rows.append([arm, "—", "—", "—", "—"])
            continue
        fmt = lambda v, spec=".3f": "—" if v is None else format(v, spec)  # noqa: E731
        before_after = f"{fmt(t['held_out_accuracy_first'])} → {fmt(t['held_out_accuracy_last'])}"
        seconds = "—" if t["train_seconds"] is None else f"{t['train_seconds']:.0f} s"
        rows.append([arm, fmt(t["final_reward"]), before_after, fmt(t["mean_temperature"], ".2f"), seconds])
    return header, rows


# --------------------------------------------------------------------------------------------------------------------
# Plots of a comparison
# --------------------------------------------------------------------------------------------------------------------


def comparison_plots(root: Path, results: dict[str, Any]) -> list[Path]:
    arm_names = list(results["arms"])
    colours = plots.arm_colours(arm_names)
    seeds = results["seeds"]
    rows = {arm: [read_metrics(run_folder(root, arm, s)) for s in seeds] for arm in arm_names}
    rows = {arm: [r for r in runs if r] for arm, runs in rows.items()}
    steps = results["setup"]["steps"]
    window = plots.smoothing_window(steps)

    def by_arm(key: str) -> dict[str, list[dict[int, float]]]:
        return {arm: [series(r, key) for r in runs] for arm, runs in rows.items() if runs}

    files: list[Path | None] = [
        plots.plot_arm_curves(
            [
                ("training reward", "mean reward of the rollout batch", by_arm("reward"), window, ""),
                (
                    "held-out accuracy during training",
                    "accuracy (in-training evaluation)",
                    by_arm("eval/accuracy"),
                    1,
                    "o",
                ),
            ],
            colours,
            "Reward and accuracy against step",
            root / "reward_accuracy.png",
        ),
        plots.plot_arm_curves(
            [("sampling temperature", "mean τ over sampled tokens", by_arm("temperature/mean"), 1, "")],
            colours,
            "Temperature against step",
            root / "temperature.png",
        ),
    ]
    distributions = {}
    for arm, runs in rows.items():
        merged = mean_distribution([d for d in (candidate_distribution(r) for r in runs) if d is not None])
        if merged is not None:
            distributions[arm] = merged
    files.append(
        plots.plot_candidate_heatmaps(
            distributions,
            "TAMPO meta-policy over candidate temperatures (mean over seeds)",
            root / "tampo_distribution.png",
        )
    )
    scatter = {}
    for arm in arm_names:
        entropies, taus = [], []
        for seed in seeds:
            path = run_folder(root, arm, seed) / TOKEN_SAMPLES_FILE
            if path.is_file():
                data = json.loads(path.read_text())
                entropies += data["entropy_at_T1"]
                taus += data["temperature"]
        if taus:
            scatter[arm] = (np.array(entropies), np.array(taus))
    correlation = {arm: curves for arm, curves in by_arm("temperature/entropy_corr").items() if any(curves)}
    files.append(
        plots.plot_tau_entropy(
            scatter,
            correlation,
            colours,
            "IntroLLM: temperature against token entropy",
            root / "introspective_tau_entropy.png",
        )
    )
    metric = results["primary"]["metric"]
    table = {
        arm: {
            label: (e["mean"], e["ci_low"], e["ci_high"])
            for label, m in (info.get("evaluation") or {}).items()
            if (e := m.get(metric))
        }
        for arm, info in results["arms"].items()
    }
    files.append(
        plots.plot_evaluation_bars(
            table,
            _setting_order(results),
            colours,
            metric,
            f"Final models: {metric} at every evaluation setting (95% CI over seeds)",
            root / "evaluation.png",
        )
    )
    return [f for f in files if f is not None]


# --------------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------------

PLOT_CAPTIONS = {
    "reward_accuracy.png": "Training reward (moving average) and in-training held-out accuracy against step.",
    "temperature.png": "Mean sampling temperature of each step's tokens.",
    "tampo_distribution.png": "TAMPO's meta-policy probabilities over the candidate temperatures against step.",
    "introspective_tau_entropy.png": "IntroLLM: the head's temperature against the token's entropy at T=1.",
    "evaluation.png": "Final models at every evaluation setting.",
}


def render_markdown(results: dict[str, Any], files: list[Path]) -> str:
    setup = results["setup"]
    ev = results["evaluation"]
    parts = [f"# Comparison: {results['name']}", ""]
    if results["description"]:
        parts += [results["description"].strip(), ""]
    tasks = ", ".join(ev["tasks"]) if ev["tasks"] else f"{setup['task']} held-out set"
    parts += [
        f"Model `{setup['model']}` on `{setup['task']}`: {setup['steps']} steps of {setup['prompts_per_step']} "
        f"prompts x {setup['num_generations']} samples (≤ {setup['max_completion_length']} tokens), "
        f"lr {setup['learning_rate']:g}, loss {setup['loss_type']}. Seeds {results['seeds']} "
        "(paired: the same data order and seed in every arm). "
        f"Evaluation: {ev['size'] or 'all'} problems of {tasks}, k = {ev['k']} samples at "
        f"{', '.join(setting_label(t) for t in ev['temperatures'])}.",
        "",
        "## Result",
        "",
        results["statement"],
        "",
        "## Summary",
        "",
        _markdown_table(*summary_rows(results)),
        "",
        "Intervals are 95% Student-t intervals over seeds; Δ is paired by seed (mean of the per-seed differences).",
        "",
        "## Final accuracy per seed",
        "",
        _markdown_table(*per_seed_rows(results)),
        "",
        "## Evaluation at every temperature",
        "",
        f"avg@{ev['k']} (mean correctness of the {ev['k']} samples; greedy repeats one decode):",
        "",
        _markdown_table(*evaluation_rows(results, f"avg@{ev['k']}")),
        "",
    ]
    if ev["k"] > 1:
        parts += [
            f"pass@{ev['k']} (unbiased estimator from {ev['k']} samples):",
            "",
            _markdown_table(*evaluation_rows(results, f"pass@{ev['k']}")),
            "",
        ]
    parts += ["## Training", "", _markdown_table(*training_rows(results)), "", "## Plots", ""]
    for path in files:
        parts += [f"![{path.stem}]({path.name})", "", PLOT_CAPTIONS.get(path.name, ""), ""]
    if results["missing_runs"]:
        missing = ", ".join(f"{a} seed {s}" for a, s in results["missing_runs"])
        parts += ["## Missing runs", "", f"Not evaluated yet (left out of every number above): {missing}.", ""]
    parts += ["Regenerate with `kelvin report <this folder>`; every number is in results.json.", ""]
    return "\n".join(parts)


def write_comparison_report(root: str | Path) -> ComparisonReport:
    """Write report.md, results.json and the PNGs of a comparison folder; returns them."""
    root = Path(root)
    if not (root / COMPARISON_FILE).is_file():
        raise FileNotFoundError(f"{root} holds no {COMPARISON_FILE}: it is not a comparison folder (kelvin compare).")
    results = collect_results(root)
    files = comparison_plots(root, results)
    markdown = render_markdown(results, files)
    (root / "report.md").write_text(markdown)
    (root / "results.json").write_text(json.dumps(results, indent=2))
    return ComparisonReport(
        root=root,
        results=results,
        markdown=markdown,
        summary_text=_text_table(*summary_rows(results)),
        files=[root / "report.md", root / "results.json", *files],
    )


def write_run_report(folder: str | Path) -> list[Path]:
    """Plots of one training run (reward, accuracy, temperature against step; TAMPO / IntroLLM when logged) and a
    short report.md."""
    folder = Path(folder)
    rows = read_metrics(folder)
    if not rows:
        raise FileNotFoundError(f"{folder} has no metrics.jsonl (or it is empty): it is not a training run folder.")
    name = folder.name
    colours = plots.arm_colours([name])
    steps = max((int(r["step"]) for r in rows), default=0)
    window = plots.smoothing_window(steps)
    one = lambda key: {name: [series(rows, key)]}  # noqa: E731
    files: list[Path | None] = [
        plots.plot_arm_curves(
            [
                ("training reward", "mean reward of the rollout batch", one("reward"), window, ""),
                ("held-out accuracy", "accuracy (in-training evaluation)", one("eval/accuracy"), 1, "o"),
                ("sampling temperature", "mean τ over sampled tokens", one("temperature/mean"), 1, ""),
            ],
            colours,
            f"Training run {name}",
            folder / "training.png",
        )
    ]
    distribution = candidate_distribution(rows)
    if distribution is not None:
        files.append(
            plots.plot_candidate_heatmaps(
                {name: distribution}, "TAMPO meta-policy over candidate temperatures", folder / "tampo_distribution.png"
            )
        )
    correlation = series(rows, "temperature/entropy_corr")
    scatter = {}
    if (folder / TOKEN_SAMPLES_FILE).is_file():
        data = json.loads((folder / TOKEN_SAMPLES_FILE).read_text())
        scatter[name] = (np.array(data["entropy_at_T1"]), np.array(data["temperature"]))
    if correlation or scatter:
        files.append(
            plots.plot_tau_entropy(
                scatter,
                {name: [correlation]} if correlation else {},
                colours,
                "IntroLLM: temperature against token entropy",
                folder / "introspective_tau_entropy.png",
            )
        )
    made = [f for f in files if f is not None]
    summary = _training_summary(rows)
    lines = [
        f"# Training run {name}",
        "",
        f"- steps: {summary['steps']}",
        f"- train reward over the last 10% of steps: {_fmt(summary['final_reward'])}",
        f"- held-out accuracy (in-training evaluation): {_fmt(summary['held_out_accuracy_first'])} → "
        f"{_fmt(summary['held_out_accuracy_last'])}",
        f"- mean sampling temperature: {_fmt(summary['mean_temperature'], '.2f')}",
        "",
        *[f"![{p.stem}]({p.name})\n" for p in made],
    ]
    (folder / "report.md").write_text("\n".join(lines))
    return [folder / "report.md", *made]


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def write_report(path: str | Path) -> ComparisonReport | list[Path]:
    """A comparison folder's report, or a training run's plots, whichever `path` is."""
    path = Path(path)
    if (path / COMPARISON_FILE).is_file():
        return write_comparison_report(path)
    if (path / "metrics.jsonl").is_file():
        return write_run_report(path)
    raise FileNotFoundError(
        f"{path} is neither a comparison folder ({COMPARISON_FILE}, from kelvin compare) nor a training run "
        "(metrics.jsonl, from kelvin train)."
    )
