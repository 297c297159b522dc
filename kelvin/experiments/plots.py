"""PNG plots of training runs and comparisons (matplotlib, Agg backend: no display needed).

Every function takes plain numbers (already read from metrics.jsonl and evaluation.json) and writes one PNG.
Curves over seeds are drawn as the mean with a band from the lowest to the highest seed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from kelvin.experiments.recipe import TOKEN_SAMPLES_FILE, run_folder
from kelvin.experiments.results import (
    ComparisonResults,
    candidate_distribution,
    mean_distribution,
    read_metrics,
    series,
)

# one series: step -> value, for one seed
Series = Mapping[int, float]


def arm_colours(arms: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """A fixed colour per arm (in recipe order), the same in every plot of a report."""
    cmap = plt.get_cmap("tab10")
    return {arm: cmap(i % 10) for i, arm in enumerate(arms)}


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average; near the ends it averages the values that exist (no shrinking, no padding)."""
    if window <= 1 or values.size == 0:
        return values.astype(float)
    half = window // 2
    padded = np.concatenate([[0.0], np.cumsum(values, dtype=float)])
    idx = np.arange(values.size)
    lo = np.clip(idx - half, 0, values.size)
    hi = np.clip(idx + half + 1, 0, values.size)
    return (padded[hi] - padded[lo]) / (hi - lo)


def smoothing_window(num_steps: int) -> int:
    """About 1/25 of the run, odd, at least 1."""
    window = max(1, num_steps // 25)
    return window if window % 2 else window + 1 if window > 1 else 1


def stack_seeds(per_seed: Sequence[Series], window: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
    """(steps, values[seeds, steps]) over the steps every seed logged, each seed smoothed; None if no common step."""
    if not per_seed:
        return None
    common = sorted(set.intersection(*(set(s) for s in per_seed)))
    if not common:
        return None
    steps = np.array(common)
    values = np.array([moving_average(np.array([s[k] for k in common], dtype=float), window) for s in per_seed])
    return steps, values


LINE_STYLES = ("-", "--", "-.", ":")


def _band(
    ax: plt.Axes,
    steps: np.ndarray,
    values: np.ndarray,
    colour: tuple[float, ...],
    label: str,
    marker: str = "",
    style: str = "-",
) -> None:
    mean = values.mean(axis=0)
    ax.plot(
        steps,
        mean,
        color=colour,
        label=label,
        marker=marker,
        markersize=3 if marker else 0,
        linewidth=1.6,
        linestyle=style,
    )
    if values.shape[0] > 1:
        ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=colour, alpha=0.18, linewidth=0)


def _finish(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _seeds_note(counts: Mapping[str, int]) -> str:
    n = set(counts.values())
    if n == {1}:
        return "one seed per arm"
    if len(n) == 1:
        return f"mean of {n.pop()} seeds, band = min..max"
    return "mean over seeds, band = min..max"


def plot_arm_curves(
    panels: Sequence[tuple[str, str, Mapping[str, Sequence[Series]], int, str]],
    colours: Mapping[str, tuple[float, ...]],
    title: str,
    path: Path,
) -> Path | None:
    """Side-by-side panels (panel title, y label, arm -> per-seed series, smoothing window, marker) with one curve
    per arm; returns None when no panel has data."""
    drawable = [p for p in panels if any(stack_seeds(list(s)) for s in p[2].values())]
    if not drawable:
        return None
    fig, axes = plt.subplots(1, len(drawable), figsize=(6.2 * len(drawable), 4.3), squeeze=False)
    counts: dict[str, int] = {}
    for ax, (panel_title, ylabel, by_arm, window, marker) in zip(axes[0], drawable):
        for index, (arm, per_seed) in enumerate(by_arm.items()):
            stacked = stack_seeds(list(per_seed), window)
            if stacked is None:
                continue
            counts[arm] = len(per_seed)
            # line styles as well as colours: arms with equal curves (e.g. T = 1 throughout) stay visible
            _band(ax, stacked[0], stacked[1], colours[arm], arm, marker, LINE_STYLES[index % len(LINE_STYLES)])
        suffix = f" (moving average of {window} steps)" if window > 1 else ""
        ax.set_title(panel_title + suffix, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best", framealpha=0.8)
    fig.suptitle(f"{title} ({_seeds_note(counts)})", fontsize=11)
    return _finish(fig, path)


def plot_candidate_heatmaps(
    distributions: Mapping[str, tuple[np.ndarray, list[float], np.ndarray]], title: str, path: Path
) -> Path | None:
    """TAMPO's meta-policy over the candidate temperatures against step, one heat map per arm.

    `distributions[arm] = (steps[S], candidates[K], probs[K, S])` (already averaged over seeds)."""
    if not distributions:
        return None
    n = len(distributions)
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.9 * n + 0.6), squeeze=False)
    for ax, (arm, (steps, candidates, probs)) in zip(axes[:, 0], distributions.items()):
        extent = (steps[0] - 0.5, steps[-1] + 0.5, -0.5, len(candidates) - 0.5)
        image = ax.imshow(
            probs, aspect="auto", origin="lower", extent=extent, cmap="viridis", vmin=0.0, interpolation="nearest"
        )
        expected = (np.array(candidates)[:, None] * probs).sum(axis=0) / np.clip(probs.sum(axis=0), 1e-12, None)
        index_of = np.interp(expected, candidates, np.arange(len(candidates)))
        ax.plot(steps, index_of, color="white", linewidth=1.2, label="expected temperature")
        ax.set_yticks(range(len(candidates)))
        ax.set_yticklabels([f"{c:g}" for c in candidates], fontsize=8)
        ax.set_ylabel("candidate temperature")
        ax.set_xlabel("training step")
        ax.set_title(arm, fontsize=10)
        ax.legend(fontsize=8, loc="upper right", framealpha=0.6)
        fig.colorbar(image, ax=ax, label="meta-policy probability", pad=0.01)
    fig.suptitle(title, fontsize=11)
    return _finish(fig, path)


def plot_tau_entropy(
    scatter: Mapping[str, tuple[np.ndarray, np.ndarray]],
    correlation_curves: Mapping[str, Sequence[Series]],
    colours: Mapping[str, tuple[float, ...]],
    title: str,
    path: Path,
) -> Path | None:
    """IntroLLM: per-token tau against the token's entropy at T=1 (scatter of sampled tokens) and the per-step
    correlation logged during training. Either part may be empty."""
    has_curves = any(stack_seeds(list(s)) for s in correlation_curves.values())
    panels = int(bool(scatter)) + int(has_curves)
    if panels == 0:
        return None
    fig, axes = plt.subplots(1, panels, figsize=(6.2 * panels, 4.3), squeeze=False)
    column = 0
    if scatter:
        ax = axes[0][column]
        for arm, (entropy, tau) in scatter.items():
            r = (
                float(np.corrcoef(entropy, tau)[0, 1])
                if entropy.size > 2 and tau.std() > 0 and entropy.std() > 0
                else float("nan")
            )
            ax.scatter(
                entropy, tau, s=5, alpha=0.35, color=colours[arm], label=f"{arm} (r = {r:.2f}, {entropy.size} tokens)"
            )
        ax.set_xlabel("token entropy at T=1 (nats)")
        ax.set_ylabel("temperature chosen by the head (tau)")
        ax.set_title("held-out samples with the learned temperature", fontsize=10)
        ax.legend(fontsize=8, loc="best", markerscale=3, framealpha=0.8)
        ax.grid(alpha=0.3)
        column += 1
    if has_curves:
        ax = axes[0][column]
        for arm, per_seed in correlation_curves.items():
            stacked = stack_seeds(list(per_seed))
            if stacked is not None:
                _band(ax, stacked[0], stacked[1], colours[arm], arm)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xlabel("training step")
        ax.set_ylabel("corr(tau, entropy at T=1) over the batch")
        ax.set_title("per-token correlation during training", fontsize=10)
        ax.legend(fontsize=8, loc="best", framealpha=0.8)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    return _finish(fig, path)


def plot_evaluation_bars(
    table: Mapping[str, Mapping[str, tuple[float, float | None, float | None]]],
    settings: Sequence[str],
    colours: Mapping[str, tuple[float, ...]],
    ylabel: str,
    title: str,
    path: Path,
) -> Path | None:
    """Grouped bars: for each evaluation setting, one bar per arm (mean) with its 95% interval as an error bar.

    `table[arm][setting] = (mean, low, high)`."""
    arms = [a for a in table if any(s in table[a] for s in settings)]
    if not arms:
        return None
    width = 0.8 / len(arms)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(settings) * max(1, len(arms) / 3)), 4.3))
    x = np.arange(len(settings))
    for i, arm in enumerate(arms):
        means, lows, highs = [], [], []
        for setting in settings:
            mean, low, high = table[arm].get(setting, (np.nan, None, None))
            means.append(mean)
            lows.append(mean - low if low is not None else 0.0)
            highs.append(high - mean if high is not None else 0.0)
        ax.bar(
            x + (i - (len(arms) - 1) / 2) * width,
            means,
            width,
            color=colours[arm],
            label=arm,
            yerr=[lows, highs],
            capsize=2,
        )
    ax.set_xticks(x)
    ax.set_xticklabels(settings)
    ax.set_xlabel("evaluation setting")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=11)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(alpha=0.3, axis="y")
    return _finish(fig, path)


# --------------------------------------------------------------------------------------------------------------------
# The plots of a report
# --------------------------------------------------------------------------------------------------------------------


def comparison_plots(root: Path, results: ComparisonResults) -> list[Path]:
    """The PNGs of a comparison folder: curves per arm over seeds, TAMPO / IntroLLM plots when logged, evaluation."""
    arm_names = list(results.arms)
    colours = arm_colours(arm_names)
    seeds = results.seeds
    rows = {arm: [read_metrics(run_folder(root, arm, s)) for s in seeds] for arm in arm_names}
    rows = {arm: [r for r in runs if r] for arm, runs in rows.items()}
    steps = results.setup["steps"]
    window = smoothing_window(steps)

    def by_arm(key: str) -> dict[str, list[dict[int, float]]]:
        return {arm: [series(r, key) for r in runs] for arm, runs in rows.items() if runs}

    files: list[Path | None] = [
        plot_arm_curves(
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
        plot_arm_curves(
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
        plot_candidate_heatmaps(
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
        plot_tau_entropy(
            scatter,
            correlation,
            colours,
            "IntroLLM: temperature against token entropy",
            root / "introspective_tau_entropy.png",
        )
    )
    metric = results.primary["metric"]
    table = {
        arm: {label: (e.mean, e.low, e.high) for label, m in summary.evaluation.items() if (e := m.get(metric))}
        for arm, summary in results.arms.items()
    }
    files.append(
        plot_evaluation_bars(
            table,
            results.setting_order(),
            colours,
            metric,
            f"Final models: {metric} at every evaluation setting (95% CI over seeds)",
            root / "evaluation.png",
        )
    )
    return [f for f in files if f is not None]


def run_plots(folder: Path, rows: list[dict[str, Any]]) -> list[Path]:
    """The PNGs of one training run: reward, accuracy, temperature against step; TAMPO / IntroLLM when logged."""
    name = folder.name
    colours = arm_colours([name])
    steps = max((int(r["step"]) for r in rows), default=0)
    window = smoothing_window(steps)
    one = lambda key: {name: [series(rows, key)]}  # noqa: E731
    files: list[Path | None] = [
        plot_arm_curves(
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
            plot_candidate_heatmaps(
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
            plot_tau_entropy(
                scatter,
                {name: [correlation]} if correlation else {},
                colours,
                "IntroLLM: temperature against token entropy",
                folder / "introspective_tau_entropy.png",
            )
        )
    return [f for f in files if f is not None]
