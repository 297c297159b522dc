"""The numbers of a comparison report, typed: a run's evaluation (evaluation.json), each arm's summary over seeds,
and the comparison's results (results.json). Dicts appear only where files are read or written (`from_dict`,
`to_dict`); the rendering (kelvin/experiments/rendering.py) and the plots read these objects."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kelvin.config import KelvinConfig, build_section
from kelvin.controllers import is_baseline
from kelvin.eval.evaluation import setting_label
from kelvin.experiments.evaluation_file import RunEvaluation, TaskEvaluation
from kelvin.experiments.recipe import (
    COMPARISON_FILE,
    EVALUATION_FILE,
    WARMUP_FILE,
    Endpoint,
    EvaluationSettings,
    parse_evaluation,
    run_folder,
)
from kelvin.experiments.selection import SelectionOutcome
from kelvin.experiments.stats import (
    ALPHA,
    POWER,
    Interval,
    mean_interval,
    minimum_detectable_effect,
    paired_interval,
    seeds_needed,
)
from kelvin.rl.run_folder import read_jsonl

CONFIDENCE = 0.95
EFFECT_OF_INTEREST = 0.02  # the difference whose required seeds every report states (the papers' 1-2 points)
GREEDY_LABEL = setting_label(0.0)
PROB_PREFIX = "temperature/prob/"

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
# Summaries
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainingSummary:
    """A run's training from its metrics.jsonl (means of these over seeds for an arm)."""

    steps: float | None
    final_reward: float | None  # train reward over the last 10% of steps
    held_out_accuracy_first: float | None
    held_out_accuracy_last: float | None
    mean_temperature: float | None
    train_seconds: float | None
    policy_updates: float | None = None  # policy-optimizer steps taken (equal budgets: the same for every arm)

    @staticmethod
    def of_run(rows: list[dict[str, Any]]) -> TrainingSummary:
        reward = series(rows, "reward")
        held_out = series(rows, "eval/accuracy")
        temperature = series(rows, "temperature/mean")
        seconds = series(rows, "time/step")
        updates = series(rows, "optimizer_steps")
        return TrainingSummary(
            steps=max(reward) if reward else 0,
            final_reward=tail_mean(reward),
            held_out_accuracy_first=held_out[min(held_out)] if held_out else None,
            held_out_accuracy_last=held_out[max(held_out)] if held_out else None,
            mean_temperature=float(np.mean(list(temperature.values()))) if temperature else None,
            train_seconds=float(sum(seconds.values())) if seconds else None,
            policy_updates=updates[max(updates)] if updates else None,
        )

    @staticmethod
    def mean(runs: Sequence[TrainingSummary]) -> TrainingSummary:
        """Each field's mean over the runs that have it."""
        values = [asdict(r) for r in runs]
        return TrainingSummary(**{key: _mean_or_none([v[key] for v in values]) for key in values[0]})


@dataclass
class SeedResult:
    final_accuracy: float  # the primary endpoint's value
    evaluation: dict[str, dict[str, float]]  # test setting -> metric (mean over tasks)
    evaluation_by_task: dict[str, dict[str, TaskEvaluation]]  # test setting -> task -> evaluation
    training: TrainingSummary
    validation: dict[str, dict[str, float]] = field(default_factory=dict)  # validation setting -> metric
    tuned_setting: str | None = None  # the setting this run chose on the validation split ('tuned' endpoint)

    def to_dict(self) -> dict[str, Any]:
        by_task = {s: {name: t.to_dict() for name, t in tasks.items()} for s, tasks in self.evaluation_by_task.items()}
        out = {
            "final_accuracy": self.final_accuracy,
            "evaluation": self.evaluation,
            "evaluation_by_task": by_task,
            "training": asdict(self.training),
        }
        if self.validation:
            out |= {"validation": self.validation, "tuned_setting": self.tuned_setting}
        return out

    def endpoint_values(self, k: int) -> dict[str, float]:
        """Every endpoint this run was evaluated on, by name: greedy, tuned avg@k / pass@k, T=<x> avg@k / pass@k."""
        avg, best = f"avg@{k}", f"pass@{k}"
        out: dict[str, float] = {}
        if GREEDY_LABEL in self.evaluation:
            out[GREEDY_LABEL] = self.evaluation[GREEDY_LABEL][avg]
        if self.tuned_setting is not None:
            out[f"tuned {avg}"] = self.evaluation[self.tuned_setting][avg]
            if k > 1:
                out[f"tuned {best}"] = self.evaluation[self.tuned_setting][best]
        for label, metrics in self.evaluation.items():
            if label.startswith("T="):
                out[f"{label} {avg}"] = metrics[avg]
                if k > 1:
                    out[f"{label} {best}"] = metrics[best]
        return out


@dataclass
class PairedDifference:
    """An arm minus the reference arm, paired by seed."""

    reference: str
    differences: dict[str, float]  # seed -> difference
    interval: Interval

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "differences": self.differences, **self.interval.to_dict()}


@dataclass
class ArmSummary:
    controller: str
    overrides: dict[str, Any]
    seeds: dict[str, SeedResult]  # only the evaluated seeds
    final_accuracy: Interval | None = None  # None: no evaluated seed
    evaluation: dict[str, dict[str, Interval]] = field(default_factory=dict)  # setting -> metric -> over seeds
    training: TrainingSummary | None = None
    vs_best_fixed: PairedDifference | None = None  # the primary endpoint minus the reference arm's
    secondary: dict[str, PairedDifference] = field(default_factory=dict)  # endpoint -> difference to the reference
    tuned: dict[str, Interval] = field(default_factory=dict)  # metric -> over seeds, at each seed's tuned setting

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "controller": self.controller,
            "overrides": self.overrides,
            "seeds": {seed: result.to_dict() for seed, result in self.seeds.items()},
        }
        if self.seeds:
            out["final_accuracy"] = self.final_accuracy.to_dict() if self.final_accuracy else None
            out["evaluation"] = {s: {m: i.to_dict() for m, i in ms.items()} for s, ms in self.evaluation.items()}
            out["training"] = asdict(self.training) if self.training else None
            if self.tuned:
                out["tuned"] = {metric: interval.to_dict() for metric, interval in self.tuned.items()}
        out["vs_best_fixed"] = self.vs_best_fixed.to_dict() if self.vs_best_fixed else None
        out["secondary"] = {name: d.to_dict() for name, d in self.secondary.items()}
        return out


@dataclass
class Power:
    """What the comparison could have seen: per arm, the minimum detectable effect of the primary endpoint at 80% power
    (two-sided alpha 0.05) from the observed SD of its paired differences, and the seeds an effect of `effect` needs."""

    endpoint: str
    effect: float = EFFECT_OF_INTEREST
    power: float = POWER
    alpha: float = ALPHA
    seeds: dict[str, int] = field(default_factory=dict)  # arm -> paired seeds
    paired_sd: dict[str, float] = field(default_factory=dict)
    minimum_detectable_effect: dict[str, float | None] = field(default_factory=dict)  # None: the SD was 0
    seeds_needed: dict[str, int | None] = field(default_factory=dict)  # for +effect; None: the SD was 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ComparisonResults:
    """Every number of a comparison report (results.json)."""

    name: str
    description: str
    confidence: float
    primary: dict[str, str]  # {"endpoint": greedy | tuned | T=<x>, "setting": label or "tuned", "metric": "avg@k"}
    seeds: list[int]
    evaluation: dict[str, Any]  # the EvaluationSettings
    setup: dict[str, Any]  # model, task, steps, batch, lr, loss of the base config; what a seed varies
    best_fixed_arm: str | None  # the reference arm: the selection's arm, else the best fixed arm on this evaluation
    arms: dict[str, ArmSummary]
    missing_runs: list[list[Any]]  # [arm, seed] pairs without a current evaluation
    statement: str = ""  # the paragraph of the report (kelvin/experiments/rendering.py)
    # "<arm>/seed-<s>" -> SHA-256 of the warmed-up tiny model's weights the run started from (its warmup.json);
    # runs from another model, or trained before runs recorded it, are absent
    warmup_sha256: dict[str, str] = field(default_factory=dict)
    reference: str = "best"  # how best_fixed_arm was chosen: "selection" (validation, other seeds) or "best"
    selection: dict[str, Any] | None = None  # kelvin/experiments/selection.py's outcome
    power: Power | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in ("name", "description", "confidence", "primary", "seeds", "evaluation")}
        out |= {"setup": self.setup, "best_fixed_arm": self.best_fixed_arm, "reference": self.reference}
        out["arms"] = {arm: summary.to_dict() for arm, summary in self.arms.items()}
        out |= {"selection": self.selection, "power": self.power.to_dict() if self.power else None}
        out |= {"missing_runs": self.missing_runs, "statement": self.statement, "warmup_sha256": self.warmup_sha256}
        return out

    def setting_order(self) -> list[str]:
        """The evaluation's settings in the recipe's order, then any other (greedy when primary, 'learned')."""
        labels = [setting_label(t) for t in read_settings(self.evaluation).test_temperatures]
        extra = dict.fromkeys(label for a in self.arms.values() for label in a.evaluation if label not in labels)
        return labels + list(extra)


# --------------------------------------------------------------------------------------------------------------------
# Collecting
# --------------------------------------------------------------------------------------------------------------------


def read_settings(raw: dict[str, Any]) -> EvaluationSettings:
    """The EvaluationSettings of a comparison.json (older files spell a common-T primary `primary_temperature`)."""
    return parse_evaluation(raw)


def tuned_choice(validation: dict[str, dict[str, float]], metric: str) -> str | None:
    """The validation setting with the best `metric` (the first in evaluation order on a tie); None without any."""
    labels = list(validation)
    if not labels:
        return None
    return labels[max(range(len(labels)), key=lambda i: (validation[labels[i]][metric], -i))]


def primary_value(result: SeedResult, endpoint: Endpoint, metric: str) -> float | None:
    if endpoint.kind == "tuned":
        return None if result.tuned_setting is None else result.evaluation[result.tuned_setting][metric]
    label = GREEDY_LABEL if endpoint.kind == "greedy" else setting_label(endpoint.temperature)
    return result.evaluation.get(label, {}).get(metric)


def collect_numbers(root: Path) -> ComparisonResults:
    """Read comparison.json, every run's evaluation.json and metrics.jsonl; compute every number (no statement)."""
    comparison = json.loads((root / COMPARISON_FILE).read_text())
    settings = read_settings(comparison["evaluation"])
    endpoint = settings.endpoint
    metric = f"avg@{settings.k}"
    arms: dict[str, ArmSummary] = {}
    missing: list[list[Any]] = []
    warmup: dict[str, str] = {}
    for arm, arm_info in comparison["arms"].items():
        per_seed: dict[str, SeedResult] = {}
        for seed in comparison["seeds"]:
            folder = run_folder(root, arm, seed)
            if digest := _warmup_digest(folder):
                warmup[f"{arm}/seed-{seed}"] = digest
            evaluation = RunEvaluation.read(folder / EVALUATION_FILE)
            if evaluation is None or _without_plan(evaluation.settings) != comparison["evaluation"]:
                missing.append([arm, seed])
                continue
            validation = {label: entry.metrics for label, entry in evaluation.validation.items()}
            result = SeedResult(
                final_accuracy=float("nan"),
                evaluation={label: entry.metrics for label, entry in evaluation.results.items()},
                evaluation_by_task={label: entry.tasks for label, entry in evaluation.results.items()},
                training=TrainingSummary.of_run(read_metrics(folder)),
                validation=validation,
                tuned_setting=tuned_choice(validation, metric),
            )
            value = primary_value(result, endpoint, metric)
            if value is None:  # evaluated without the setting the primary endpoint needs
                missing.append([arm, seed])
                continue
            result.final_accuracy = value
            per_seed[str(seed)] = result
        summary = ArmSummary(controller=arm_info["controller"], overrides=arm_info["overrides"], seeds=per_seed)
        if per_seed:
            summary.final_accuracy = mean_interval([s.final_accuracy for s in per_seed.values()], CONFIDENCE)
            summary.evaluation = _evaluation_summary(per_seed)
            summary.training = TrainingSummary.mean([s.training for s in per_seed.values()])
            summary.tuned = _tuned_summary(per_seed)
        arms[arm] = summary
    selection = comparison.get("selection")
    reference = selection["arm"] if selection and selection["arm"] in arms else best_fixed_arm(arms)
    for arm, summary in arms.items():
        if not summary.seeds or reference is None or arm == reference:
            continue
        summary.vs_best_fixed = _paired(summary, arms[reference], reference, lambda r: r.final_accuracy)
        names = dict.fromkeys(n for r in summary.seeds.values() for n in r.endpoint_values(settings.k))
        for name in names:
            difference = _paired(
                summary, arms[reference], reference, lambda r, n=name: r.endpoint_values(settings.k).get(n)
            )
            if difference is not None:
                summary.secondary[name] = difference
    return ComparisonResults(
        name=comparison["name"],
        description=comparison["description"],
        confidence=CONFIDENCE,
        primary={
            "endpoint": endpoint.name,
            "setting": endpoint.name if endpoint.kind != "greedy" else GREEDY_LABEL,
            "metric": metric,
        },
        seeds=comparison["seeds"],
        evaluation=comparison["evaluation"],
        setup=_setup(comparison),
        best_fixed_arm=reference,
        arms=arms,
        missing_runs=missing,
        warmup_sha256=warmup,
        reference="selection" if selection and reference == selection["arm"] else "best",
        selection=_selection_outcome(root, selection),
        power=_power(arms, endpoint.name),
    )


def _without_plan(saved: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in saved.items() if key != "plan"}


def _paired(
    summary: ArmSummary, reference: ArmSummary, name: str, value: Callable[[SeedResult], float | None]
) -> PairedDifference | None:
    """`value` of an arm minus the reference arm's, paired by the seeds where both have it."""
    mine = {int(s): v for s, r in summary.seeds.items() if (v := value(r)) is not None}
    theirs = {int(s): v for s, r in reference.seeds.items() if (v := value(r)) is not None}
    diffs, interval = paired_interval(mine, theirs, CONFIDENCE)
    return None if interval is None else PairedDifference(name, {str(s): d for s, d in diffs.items()}, interval)


def _endpoint_value(name: str, k: int) -> Callable[[SeedResult], float | None]:
    return lambda result: result.endpoint_values(k).get(name)


def _tuned_summary(per_seed: dict[str, SeedResult]) -> dict[str, Interval]:
    """Each metric over the seeds at the setting each seed chose on validation."""
    chosen = [r.evaluation[r.tuned_setting] for r in per_seed.values() if r.tuned_setting is not None]
    if not chosen:
        return {}
    return {name: mean_interval([m[name] for m in chosen], CONFIDENCE) for name in chosen[0]}


def _power(arms: dict[str, ArmSummary], endpoint: str) -> Power:
    power = Power(endpoint=endpoint)
    for arm, summary in arms.items():
        interval = summary.vs_best_fixed.interval if summary.vs_best_fixed else None
        if interval is None or interval.n < 2 or interval.std is None:
            continue
        power.seeds[arm] = interval.n
        power.paired_sd[arm] = interval.std
        varied = interval.std > 0
        power.minimum_detectable_effect[arm] = minimum_detectable_effect(interval.std, interval.n) if varied else None
        power.seeds_needed[arm] = seeds_needed(power.effect, interval.std) if varied else None
    return power


def _selection_outcome(root: Path, selection: dict[str, Any] | None) -> dict[str, Any] | None:
    if selection is None:
        return None
    outcome = SelectionOutcome.read(root)
    return {**selection, **(outcome.to_dict() if outcome else {})}


def _warmup_digest(folder: Path) -> str | None:
    path = folder / WARMUP_FILE
    return json.loads(path.read_text()).get("weights_sha256") if path.is_file() else None


def _mean_or_none(values: Sequence[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _evaluation_summary(per_seed: dict[str, SeedResult]) -> dict[str, dict[str, Interval]]:
    """setting -> metric -> interval over the seeds that have it."""
    labels = dict.fromkeys(label for s in per_seed.values() for label in s.evaluation)
    out: dict[str, dict[str, Interval]] = {}
    for label in labels:
        names = dict.fromkeys(n for s in per_seed.values() for n in s.evaluation.get(label, {}))
        out[label] = {
            name: mean_interval(
                [s.evaluation[label][name] for s in per_seed.values() if name in s.evaluation.get(label, {})],
                CONFIDENCE,
            )
            for name in names
        }
    return out


def best_fixed_arm(arms: dict[str, ArmSummary]) -> str | None:
    """The fixed-temperature arm with the highest mean final accuracy (the first one on a tie); None without one."""
    fixed = [
        (summary.final_accuracy.mean, -i, arm)
        for i, (arm, summary) in enumerate(arms.items())
        if is_baseline(summary.controller) and summary.seeds and summary.final_accuracy is not None
    ]
    return max(fixed)[2] if fixed else None


def _setup(comparison: dict[str, Any]) -> dict[str, Any]:
    # built without validation: a report must not need the model folder (model.path) that trained the runs
    config = build_section(KelvinConfig, comparison["base"])
    return {
        "model": config.model.path or config.model.tiny,
        "task": config.task.name,
        "steps": config.trainer.steps,
        "prompts_per_step": config.trainer.prompts_per_step,
        "num_generations": config.sampling.num_generations,
        "max_completion_length": config.sampling.max_completion_length,
        "learning_rate": config.optim.learning_rate,
        "loss_type": config.loss.loss_type,
        # what seed s varies: trainer.seed = s always; task.seed = task_seed + s when the data order varies
        "vary_data_order": bool(comparison.get("vary_data_order", False)),  # absent: written before it existed
        "task_seed": config.task.seed,
        "eval_seed": config.task.eval_seed if config.task.eval_seed is not None else config.task.seed,
    }
