"""The tables of a comparison report and its markdown page, from its typed numbers (kelvin/experiments/results.py);
the result paragraph comes from kelvin/experiments/statement.py."""

from __future__ import annotations

from pathlib import Path

from kelvin.experiments.results import ComparisonResults, TrainingSummary
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


def primary_label(results: ComparisonResults) -> str:
    primary = results.primary
    endpoint = primary.get("endpoint", primary["setting"])
    return "greedy accuracy" if endpoint == "greedy" else f"{primary['metric']}, {endpoint}"


def summary_rows(results: ComparisonResults) -> tuple[list[str], list[list[str]]]:
    best = results.best_fixed_arm
    reference = "reference" if results.reference == "selection" else "best fixed"
    header = [
        "arm",
        "controller",
        "seeds",
        f"primary ({primary_label(results)})",
        "95% CI",
        f"Δ vs {reference} ({best})" if best else "Δ vs best fixed",
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


def power_rows(results: ComparisonResults) -> tuple[list[str], list[list[str]]]:
    power = results.power
    assert power is not None
    header = [
        "arm",
        "paired seeds",
        "SD of paired Δ",
        f"minimum detectable effect ({power.power:.0%}, α {power.alpha:g})",
        f"seeds for ±{power.effect:g}",
    ]
    rows = [
        [
            arm,
            str(n),
            f"{power.paired_sd[arm]:.4f}",
            fmt(power.minimum_detectable_effect[arm]),
            "—" if power.seeds_needed[arm] is None else str(power.seeds_needed[arm]),
        ]
        for arm, n in power.seeds.items()
    ]
    return header, rows


def secondary_rows(results: ComparisonResults) -> tuple[list[str], list[list[str]]]:
    """Every endpoint's paired difference to the reference arm, one column per endpoint."""
    names = list(dict.fromkeys(n for s in results.arms.values() for n in s.secondary))
    rows = []
    for arm, summary in results.arms.items():
        if arm == results.best_fixed_arm or not summary.secondary:
            continue
        cells = [arm]
        for name in names:
            d = summary.secondary.get(name)
            cells.append("—" if d is None else f"{_signed(d.interval.mean)} {_ci(d.interval, signed=True)}")
        rows.append(cells)
    return ["arm", *names], rows


def selection_rows(results: ComparisonResults) -> tuple[list[str], list[list[str]]]:
    selection = results.selection or {}
    seeds = [str(s) for s in selection.get("seeds", [])]
    header = ["temperature", "mean score", "95% CI", *[f"seed {s}" for s in seeds]]
    rows = []
    for label, mean in selection.get("means", {}).items():
        scores = selection["scores"][label]
        chosen = " (chosen)" if label == f"T={selection.get('chosen_temperature'):g}" else ""
        low, high = mean.get("ci_low"), mean.get("ci_high")
        interval = "—" if low is None or high is None else f"[{low:.3f}, {high:.3f}]"
        rows.append([label + chosen, f"{mean['mean']:.3f}", interval, *[f"{scores[s]:.3f}" for s in seeds]])
    return header, rows


def tuned_rows(results: ComparisonResults, k: int) -> tuple[list[str], list[list[str]]]:
    header = ["arm", "temperatures chosen on validation (seeds)", f"avg@{k}", *([f"pass@{k}"] if k > 1 else [])]
    rows = []
    for arm, summary in results.arms.items():
        if not summary.tuned:
            continue
        counts: dict[str, int] = {}
        for result in summary.seeds.values():
            if result.tuned_setting is not None:
                counts[result.tuned_setting] = counts.get(result.tuned_setting, 0) + 1
        chosen = ", ".join(f"{label} ({n})" for label, n in sorted(counts.items()))
        cells = [arm, chosen]
        for metric in [f"avg@{k}", *([f"pass@{k}"] if k > 1 else [])]:
            entry = summary.tuned[metric]
            cells.append(f"{entry.mean:.3f} {_ci(entry)}")
        rows.append(cells)
    return header, rows


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
    k = ev["k"]
    parts = [f"# Comparison: {results.name}", ""]
    if results.description:
        parts += [results.description.strip(), ""]
    tasks = ", ".join(ev["tasks"]) if ev["tasks"] else f"{setup['task']} held-out set"
    settings = ", ".join(dict.fromkeys(label for label in results.setting_order()))
    parts += [
        f"Model `{setup['model']}` on `{setup['task']}`: {setup['steps']} steps of {setup['prompts_per_step']} "
        f"prompts x {setup['num_generations']} samples (≤ {setup['max_completion_length']} tokens), "
        f"lr {setup['learning_rate']:g}, loss {setup['loss_type']}. Seeds {results.seeds}, paired by seed. "
        f"Evaluation: {ev['size'] or 'all'} problems of {tasks}, k = {k} samples at {settings}.",
        "",
    ]
    if note := warmup_note(results):
        parts += [note, ""]
    parts += [
        "## Result",
        "",
        results.statement,
        "",
        f"## Primary endpoint: {primary_label(results)}",
        "",
        markdown_table(*summary_rows(results)),
        "",
        "Intervals are 95% Student-t intervals over seeds; Δ is paired by seed (mean of the per-seed differences).",
        "",
    ]
    if results.power is not None and results.power.seeds:
        parts += [
            "## Power",
            "",
            markdown_table(*power_rows(results)),
            "",
            "The smallest true difference in the primary endpoint a two-sided paired t-test over these seeds detects "
            f"with {results.power.power:.0%} probability, from the observed SD of the paired differences (noncentral "
            "t), and the seeds a difference of the size the papers report would need.",
            "",
        ]
    header, rows = secondary_rows(results)
    if rows:
        parts += [
            "## Every endpoint against the reference",
            "",
            markdown_table(header, rows),
            "",
            "Paired Δ vs the reference arm with its 95% interval. The common-temperature columns favour arms trained "
            "near that temperature (a policy learns its logits for the temperature it samples at).",
            "",
        ]
    if results.selection is not None and results.selection.get("means"):
        parts += [
            f"## Selection of {results.selection['arm']}'s temperature",
            "",
            f"Score: {results.selection.get('criterion', 'the primary endpoint on the validation split')}; the "
            "selection runs use seeds disjoint from the comparison's and are not part of it.",
            "",
            markdown_table(*selection_rows(results)),
            "",
        ]
    header, rows = tuned_rows(results, k)
    if rows:
        parts += [
            "## Each run at its own validation-best temperature (tuned)",
            "",
            markdown_table(header, rows),
            "",
        ]
    parts += [
        "## Primary endpoint per seed",
        "",
        markdown_table(*per_seed_rows(results)),
        "",
        "## Evaluation at every temperature (common temperatures, test split)",
        "",
        f"avg@{k} (mean correctness of the {k} samples; greedy repeats one decode):",
        "",
        markdown_table(*evaluation_rows(results, f"avg@{k}")),
        "",
    ]
    if k > 1:
        parts += [
            f"pass@{k} (unbiased estimator from {k} samples):",
            "",
            markdown_table(*evaluation_rows(results, f"pass@{k}")),
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
