"""The words and tables of a comparison report, from its typed numbers (kelvin/experiments/results.py)."""

from __future__ import annotations

from pathlib import Path

from scipy import stats

from kelvin.controllers import is_baseline
from kelvin.eval.evaluation import setting_label
from kelvin.experiments.results import CONFIDENCE, ComparisonResults, TrainingSummary
from kelvin.experiments.stats import Interval

PLOT_CAPTIONS = {
    "reward_accuracy.png": "Training reward (moving average) and in-training held-out accuracy against step.",
    "temperature.png": "Mean sampling temperature of each step's tokens.",
    "tampo_distribution.png": "TAMPO's meta-policy probabilities over the candidate temperatures against step.",
    "introspective_tau_entropy.png": "IntroLLM: the head's temperature against the token's entropy at T=1.",
    "evaluation.png": "Final models at every evaluation setting.",
}


def fmt(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def _signed(x: float) -> str:
    return f"{x:+.3f}"


def _ci(info: Interval | None, signed: bool = False) -> str:
    if info is None:
        return "—"
    if info.low is None or info.high is None:
        return f"n={info.n}, no interval"
    show = _signed if signed else (lambda v: f"{v:.3f}")
    return f"[{show(info.low)}, {show(info.high)}]"


def statement(results: ComparisonResults) -> str:
    """One honest paragraph, generated from the numbers: each arm against the best fixed arm, with its interval."""
    arms = {a: s for a, s in results.arms.items() if s.seeds}
    primary, setup, ev = results.primary, results.setup, results.evaluation
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
    best = results.best_fixed_arm
    sentences = [opening]
    accuracy = {a: s.final_accuracy.mean for a, s in arms.items() if s.final_accuracy is not None}
    if best is None:
        ranked = sorted(accuracy, key=lambda a: -accuracy[a])
        listing = ", ".join(f"{a} {accuracy[a]:.3f}" for a in ranked)
        sentences.append(
            f"There is no fixed-temperature arm, so nothing is compared with a fixed baseline ({listing})."
        )
        return " ".join(sentences)
    fixed = [a for a in arms if is_baseline(arms[a].controller)]
    chosen = (
        f", chosen among {len(fixed)} fixed arms on this same evaluation, which flatters it" if len(fixed) > 1 else ""
    )
    sentences.append(f"The best fixed-temperature arm is {best} at {accuracy[best]:.3f}{chosen}.")
    undecided = False
    for arm, summary in arms.items():
        if arm == best or summary.vs_best_fixed is None:
            continue
        d = summary.vs_best_fixed.interval
        direction = "above" if d.mean > 0 else "below" if d.mean < 0 else "level with"
        amount = f"{abs(d.mean):.3f} {direction}" if d.mean != 0 else "level with"
        if d.low is None or d.high is None:
            sentences.append(
                f"{arm} is {amount} {best} with one paired seed: there is no interval, so this does not say which is "
                "better."
            )
            undecided = True
        elif d.excludes_zero:
            verdict = "better than" if d.mean > 0 else "worse than"
            sentences.append(
                f"{arm} is {amount} {best}, 95% CI [{_signed(d.low)}, {_signed(d.high)}] over {d.n} "
                f"paired seeds: {verdict} {best} at {d.n} seeds (the interval excludes 0)."
            )
        else:
            sentences.append(
                f"{arm} is {amount} {best}, 95% CI [{_signed(d.low)}, {_signed(d.high)}]: not "
                f"distinguishable at {d.n} seeds."
            )
            undecided = True
    if undecided:
        sentences.append(_width_note(results))
    if results.missing_runs:
        sentences.append(f"{len(results.missing_runs)} run(s) have no evaluation yet and are left out.")
    return " ".join(sentences)


def _width_note(results: ComparisonResults) -> str:
    """Why the intervals are as wide as they are: the t quantile at the number of paired seeds."""
    paired = [s.vs_best_fixed.interval.n for s in results.arms.values() if s.vs_best_fixed]
    n = min(paired) if paired else 0
    if n >= 2:
        t = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df=n - 1))
        return (
            f"With {n} seeds a 95% interval spans ±{t:.2f} standard errors of the per-seed differences; more seeds "
            "(--seeds) narrow it, more steps (--steps) let the arms drift further apart."
        )
    return "More seeds (--seeds) give intervals; more steps (--steps) let the arms drift further apart."


def warmup_note(results: ComparisonResults) -> str | None:
    """Which warmed-up tiny model the runs started from, by its weights digest; None when no run recorded one."""
    digests = results.warmup_sha256
    if not digests:
        return None
    distinct = dict.fromkeys(digests.values())
    if len(distinct) > 1:
        groups = "; ".join(f"`{d[:16]}` ({', '.join(run for run, x in digests.items() if x == d)})" for d in distinct)
        return (
            f"Base weights differ between runs (SHA-256 of the warmed-up tiny model, each run's warmup.json): "
            f"{groups}. These runs did not start from the same model, so they differ in more than the controller."
        )
    runs = len(results.arms) * len(results.seeds)
    which = "every run" if len(digests) == runs else f"{len(digests)} of the {runs} runs (the others recorded none)"
    return (
        f"Base weights: the warmed-up tiny model, SHA-256 `{next(iter(distinct))[:16]}` in {which} (warmup.json). "
        "The warm-up is bitwise reproducible on CPU with one thread (fixed seed and steps) for the same torch build "
        "and CPU instruction set; a different digest on another machine means a different base model."
    )


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([line.format(*header), line.format(*("-" * w for w in widths)), *(line.format(*r) for r in rows)])


def summary_rows(results: ComparisonResults) -> tuple[list[str], list[list[str]]]:
    primary, best = results.primary, results.best_fixed_arm
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
    for arm, summary in results.arms.items():
        acc = summary.final_accuracy
        if not summary.seeds or acc is None:
            rows.append([arm, summary.controller, "0", "not evaluated", "—", "—", "—"])
            continue
        if arm == best:
            delta, delta_ci = "reference", "—"
        elif summary.vs_best_fixed is None:
            delta, delta_ci = "—", "—"
        else:
            d = summary.vs_best_fixed.interval
            delta, delta_ci = _signed(d.mean), _ci(d, signed=True)
        rows.append([arm, summary.controller, str(acc.n), f"{acc.mean:.3f}", _ci(acc), delta, delta_ci])
    return header, rows


def evaluation_rows(results: ComparisonResults, metric: str) -> tuple[list[str], list[list[str]]]:
    labels = results.setting_order()
    rows = []
    for arm, summary in results.arms.items():
        cells = [arm]
        for label in labels:
            entry = summary.evaluation.get(label, {}).get(metric)
            if entry is None:
                cells.append("—")
            elif entry.low is None or entry.high is None:
                cells.append(f"{entry.mean:.3f}")
            else:
                cells.append(f"{entry.mean:.3f} [{entry.low:.3f}, {entry.high:.3f}]")
        rows.append(cells)
    return ["arm", *labels], rows


def per_seed_rows(results: ComparisonResults) -> tuple[list[str], list[list[str]]]:
    seeds = [str(s) for s in results.seeds]
    header = ["arm", *[f"seed {s}" for s in seeds], "mean"]
    rows = []
    for arm, summary in results.arms.items():
        cells = [arm] + [f"{summary.seeds[s].final_accuracy:.3f}" if s in summary.seeds else "—" for s in seeds]
        cells.append(f"{summary.final_accuracy.mean:.3f}" if summary.seeds and summary.final_accuracy else "—")
        rows.append(cells)
    return header, rows


def training_rows(results: ComparisonResults) -> tuple[list[str], list[list[str]]]:
    header = [
        "arm",
        "train reward (last 10% of steps)",
        "held-out acc. before → after (in training)",
        "mean τ",
        "policy updates / run",
        "train time / run",
    ]
    rows = []
    for arm, summary in results.arms.items():
        t: TrainingSummary | None = summary.training
        if t is None:
            rows.append([arm, "—", "—", "—", "—", "—"])
            continue
        before_after = f"{fmt(t.held_out_accuracy_first)} → {fmt(t.held_out_accuracy_last)}"
        seconds = "—" if t.train_seconds is None else f"{t.train_seconds:.0f} s"
        updates = "—" if t.policy_updates is None else f"{t.policy_updates:.0f}"
        rows.append([arm, fmt(t.final_reward), before_after, fmt(t.mean_temperature, ".2f"), updates, seconds])
    return header, rows


def render_markdown(results: ComparisonResults, files: list[Path]) -> str:
    setup, ev = results.setup, results.evaluation
    parts = [f"# Comparison: {results.name}", ""]
    if results.description:
        parts += [results.description.strip(), ""]
    tasks = ", ".join(ev["tasks"]) if ev["tasks"] else f"{setup['task']} held-out set"
    parts += [
        f"Model `{setup['model']}` on `{setup['task']}`: {setup['steps']} steps of {setup['prompts_per_step']} "
        f"prompts x {setup['num_generations']} samples (≤ {setup['max_completion_length']} tokens), "
        f"lr {setup['learning_rate']:g}, loss {setup['loss_type']}. Seeds {results.seeds} "
        "(paired: the same data order and seed in every arm). "
        f"Evaluation: {ev['size'] or 'all'} problems of {tasks}, k = {ev['k']} samples at "
        f"{', '.join(setting_label(t) for t in ev['temperatures'])}.",
        "",
    ]
    if note := warmup_note(results):
        parts += [note, ""]
    parts += [
        "## Result",
        "",
        results.statement,
        "",
        "## Summary",
        "",
        markdown_table(*summary_rows(results)),
        "",
        "Intervals are 95% Student-t intervals over seeds; Δ is paired by seed (mean of the per-seed differences).",
        "",
        "## Final accuracy per seed",
        "",
        markdown_table(*per_seed_rows(results)),
        "",
        "## Evaluation at every temperature",
        "",
        f"avg@{ev['k']} (mean correctness of the {ev['k']} samples; greedy repeats one decode):",
        "",
        markdown_table(*evaluation_rows(results, f"avg@{ev['k']}")),
        "",
    ]
    if ev["k"] > 1:
        parts += [
            f"pass@{ev['k']} (unbiased estimator from {ev['k']} samples):",
            "",
            markdown_table(*evaluation_rows(results, f"pass@{ev['k']}")),
            "",
        ]
    parts += ["## Training", "", markdown_table(*training_rows(results)), "", "## Plots", ""]
    for path in files:
        parts += [f"![{path.stem}]({path.name})", "", PLOT_CAPTIONS.get(path.name, ""), ""]
    if results.missing_runs:
        missing = ", ".join(f"{a} seed {s}" for a, s in results.missing_runs)
        parts += ["## Missing runs", "", f"Not evaluated yet (left out of every number above): {missing}.", ""]
    parts += ["Regenerate with `kelvin report <this folder>`; every number is in results.json.", ""]
    return "\n".join(parts)


def run_markdown(name: str, summary: TrainingSummary, plots: list[Path]) -> str:
    """The short report.md of one training run."""
    lines = [
        f"# Training run {name}",
        "",
        f"- steps: {summary.steps}",
        f"- train reward over the last 10% of steps: {fmt(summary.final_reward)}",
        f"- held-out accuracy (in-training evaluation): {fmt(summary.held_out_accuracy_first)} → "
        f"{fmt(summary.held_out_accuracy_last)}",
        f"- mean sampling temperature: {fmt(summary.mean_temperature, '.2f')}",
        f"- policy-optimizer updates: {fmt(summary.policy_updates, '.0f')}",
        "",
        *[f"![{p.stem}]({p.name})\n" for p in plots],
    ]
    return "\n".join(lines)
