"""The numbers of a comparison report, typed: a run's evaluation (evaluation.json), each arm's summary over seeds,
and the comparison's results (results.json). Dicts appear only where files are read or written (`from_dict`,
`to_dict`); the rendering (kelvin/experiments/rendering.py) and the plots read these objects."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kelvin.config import KelvinConfig, build_section
from kelvin.controllers import is_baseline
from kelvin.eval.evaluation import setting_label
from kelvin.experiments.recipe import COMPARISON_FILE, EVALUATION_FILE, WARMUP_FILE, run_folder
from kelvin.experiments.stats import Interval, mean_interval, paired_interval
from kelvin.rl.run_folder import read_jsonl

CONFIDENCE = 0.95
PROB_PREFIX = "temperature/prob/"

# --------------------------------------------------------------------------------------------------------------------
# A run's evaluation (evaluation.json, written by the runner)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TaskEvaluation:
    """One task at one setting: its metrics and the evaluation's bookkeeping (None: absent from the file read)."""

    metrics: dict[str, float]
    correct_counts: list[int] | None = None
    k: int | None = None
    num_examples: int | None = None
    mean_completion_tokens: float | None = None
    truncated_fraction: float | None = None
    verify_failures: int | None = None
    verify_timeouts: int | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass
class SettingEvaluation:
    """Every task at one setting (a temperature, or None: the controller's learned temperature)."""

    temperature: float | None
    tasks: dict[str, TaskEvaluation]
    metrics: dict[str, float]  # unweighted mean over the tasks


@dataclass
class RunEvaluation:
    """A final model's evaluation at every setting: evaluation.json of a run folder."""

    settings: dict[str, Any]  # the EvaluationSettings it was made with (reused only when they match)
    arm: str | None  # None: absent from the file read
    seed: int | None
    results: dict[str, SettingEvaluation]  # setting label -> evaluation

    def to_dict(self) -> dict[str, Any]:
        results = {
            label: {
                "temperature": entry.temperature,
                "tasks": {name: task.to_dict() for name, task in entry.tasks.items()},
                "metrics": entry.metrics,
            }
            for label, entry in self.results.items()
        }
        run = {key: value for key, value in (("arm", self.arm), ("seed", self.seed)) if value is not None}
        return {"settings": self.settings, **run, "results": results}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> RunEvaluation:
        results = {
            label: SettingEvaluation(
                temperature=entry.get("temperature"),
                tasks={name: TaskEvaluation(**task) for name, task in entry["tasks"].items()},
                metrics=entry["metrics"],
            )
            for label, entry in data["results"].items()
        }
        return RunEvaluation(settings=data["settings"], arm=data.get("arm"), seed=data.get("seed"), results=results)

    @staticmethod
    def read(path: Path) -> RunEvaluation | None:
        return RunEvaluation.from_dict(json.loads(path.read_text())) if path.is_file() else None


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
    final_accuracy: float  # the primary metric at the primary setting
    evaluation: dict[str, dict[str, float]]  # setting -> metric (mean over tasks)
    evaluation_by_task: dict[str, dict[str, TaskEvaluation]]  # setting -> task -> evaluation
    training: TrainingSummary

    def to_dict(self) -> dict[str, Any]:
        by_task = {s: {name: t.to_dict() for name, t in tasks.items()} for s, tasks in self.evaluation_by_task.items()}
        return {
            "final_accuracy": self.final_accuracy,
            "evaluation": self.evaluation,
            "evaluation_by_task": by_task,
            "training": asdict(self.training),
        }


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
    vs_best_fixed: PairedDifference | None = None

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
        out["vs_best_fixed"] = self.vs_best_fixed.to_dict() if self.vs_best_fixed else None
        return out


@dataclass
class ComparisonResults:
    """Every number of a comparison report (results.json)."""

    name: str
    description: str
    confidence: float
    primary: dict[str, str]  # {"setting": label, "metric": "avg@k"}
    seeds: list[int]
    evaluation: dict[str, Any]  # the EvaluationSettings
    setup: dict[str, Any]  # model, task, steps, batch, lr, loss of the base config
    best_fixed_arm: str | None
    arms: dict[str, ArmSummary]
    missing_runs: list[list[Any]]  # [arm, seed] pairs without a current evaluation
    statement: str = ""  # the paragraph of the report (kelvin/experiments/rendering.py)
    # "<arm>/seed-<s>" -> SHA-256 of the warmed-up tiny model's weights the run started from (its warmup.json);
    # runs from another model, or trained before runs recorded it, are absent
    warmup_sha256: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in ("name", "description", "confidence", "primary", "seeds", "evaluation")}
        out |= {"setup": self.setup, "best_fixed_arm": self.best_fixed_arm}
        out["arms"] = {arm: summary.to_dict() for arm, summary in self.arms.items()}
        out |= {"missing_runs": self.missing_runs, "statement": self.statement, "warmup_sha256": self.warmup_sha256}
        return out

    def setting_order(self) -> list[str]:
        """The evaluation's settings in the recipe's order, then any other (e.g. 'learned')."""
        labels = [setting_label(t) for t in self.evaluation["temperatures"]]
        extra = dict.fromkeys(label for a in self.arms.values() for label in a.evaluation if label not in labels)
        return labels + list(extra)


# --------------------------------------------------------------------------------------------------------------------
# Collecting
# --------------------------------------------------------------------------------------------------------------------


def collect_numbers(root: Path) -> ComparisonResults:
    """Read comparison.json, every run's evaluation.json and metrics.jsonl; compute every number (no statement)."""
    comparison = json.loads((root / COMPARISON_FILE).read_text())
    settings = comparison["evaluation"]
    primary = setting_label(settings["primary_temperature"])
    metric = f"avg@{settings['k']}"
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
            if evaluation is None or evaluation.settings != settings:
                missing.append([arm, seed])
                continue
            evaluated = {label: entry.metrics for label, entry in evaluation.results.items()}
            per_seed[str(seed)] = SeedResult(
                final_accuracy=evaluated[primary][metric],
                evaluation=evaluated,
                evaluation_by_task={label: entry.tasks for label, entry in evaluation.results.items()},
                training=TrainingSummary.of_run(read_metrics(folder)),
            )
        summary = ArmSummary(controller=arm_info["controller"], overrides=arm_info["overrides"], seeds=per_seed)
        if per_seed:
            summary.final_accuracy = mean_interval([s.final_accuracy for s in per_seed.values()], CONFIDENCE)
            summary.evaluation = _evaluation_summary(per_seed)
            summary.training = TrainingSummary.mean([s.training for s in per_seed.values()])
        arms[arm] = summary
    best = best_fixed_arm(arms)
    for arm, summary in arms.items():
        if not summary.seeds or best is None or arm == best:
            continue
        diffs, interval = paired_interval(
            {int(s): v.final_accuracy for s, v in summary.seeds.items()},
            {int(s): v.final_accuracy for s, v in arms[best].seeds.items()},
            CONFIDENCE,
        )
        if interval is not None:
            summary.vs_best_fixed = PairedDifference(best, {str(s): d for s, d in diffs.items()}, interval)
    return ComparisonResults(
        name=comparison["name"],
        description=comparison["description"],
        confidence=CONFIDENCE,
        primary={"setting": primary, "metric": metric},
        seeds=comparison["seeds"],
        evaluation=settings,
        setup=_setup(comparison["base"]),
        best_fixed_arm=best,
        arms=arms,
        missing_runs=missing,
        warmup_sha256=warmup,
    )


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


def _setup(base: dict[str, Any]) -> dict[str, Any]:
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
