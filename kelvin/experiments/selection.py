"""Choosing a fixed arm's temperature before the comparison (a recipe's `selection:`), without the winner's curse.

    D/selection/runs/<arm>-T<x>/seed-<s>/   the arm trained at each candidate temperature, at each selection seed,
                                            evaluated on the VALIDATION split only (evaluation.json)
    D/selection/selection.json              each candidate's score per seed and mean, and the chosen temperature

The score of a selection run is the recipe's primary endpoint measured on the validation split: greedy accuracy,
avg@k at the common temperature, or for 'tuned' the run's best avg@k over the candidate temperatures. The candidate
with the highest mean over the selection seeds is chosen (the first listed on a tie). The selection seeds are
disjoint from the comparison's (the recipe refuses overlap) and the chosen arm is then trained afresh on the
comparison's seeds: its runs carry none of the luck that made its temperature win.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kelvin.eval.evaluation import setting_label
from kelvin.experiments.evaluation_file import RunEvaluation
from kelvin.experiments.recipe import EVALUATION_FILE, Comparison, Endpoint, run_folder
from kelvin.experiments.stats import mean_interval

SELECTION_DIR = "selection"
SELECTION_FILE = "selection.json"


@dataclass
class SelectionOutcome:
    """The scores of the candidate temperatures on the validation split and the one chosen."""

    arm: str
    criterion: str  # what a selection run's score is, in words
    seeds: list[int]
    scores: dict[str, dict[str, float]]  # candidate label (T=x) -> seed -> score
    means: dict[str, dict[str, Any]]  # candidate label -> Interval.to_dict() over seeds
    chosen_temperature: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def read(root: Path) -> SelectionOutcome | None:
        path = root / SELECTION_DIR / SELECTION_FILE
        return SelectionOutcome(**json.loads(path.read_text())) if path.is_file() else None


def selection_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / SELECTION_DIR


def selection_folder(output_dir: str | Path, arm: str, seed: int) -> Path:
    return run_folder(selection_root(output_dir), arm, seed)


def selection_overrides(comparison: Comparison) -> dict[str, Any]:
    """What a selection run changes besides the temperature: its in-training evaluation never looks at the test
    problems either (arithmetic's validation stream; for tasks without one, no in-training evaluation)."""
    task = comparison.base.get("task") or {}
    if task.get("name", "arithmetic") == "arithmetic":
        return {"task": {"eval_split": "validation"}}
    return {"trainer": {"eval_every": 0}}


def criterion(endpoint: Endpoint, k: int) -> str:
    if endpoint.kind == "greedy":
        return "greedy accuracy on the validation split"
    if endpoint.kind == "common":
        return f"avg@{k} at {endpoint.name} on the validation split"
    return f"the run's best avg@{k} over the candidate temperatures on the validation split"


def selection_score(evaluation: RunEvaluation, endpoint: Endpoint, k: int) -> float:
    """A selection run's score: the primary endpoint on the validation split."""
    metric = f"avg@{k}"
    if endpoint.kind == "greedy":
        return evaluation.validation[setting_label(0.0)].metrics[metric]
    if endpoint.kind == "common":
        return evaluation.validation[setting_label(endpoint.temperature)].metrics[metric]
    return max(entry.metrics[metric] for entry in evaluation.validation.values())


def choose_temperature(comparison: Comparison, output_dir: str | Path) -> SelectionOutcome:
    """Read every selection run's evaluation, choose the candidate with the best mean score, write selection.json."""
    selection = comparison.selection
    assert selection is not None
    endpoint, k = comparison.evaluation.endpoint, comparison.evaluation.k
    scores: dict[str, dict[str, float]] = {}
    for temperature, arm in zip(selection.temperatures, comparison.selection_arms(), strict=True):
        per_seed = {}
        for seed in selection.seeds:
            evaluation = RunEvaluation.read(selection_folder(output_dir, arm.name, seed) / EVALUATION_FILE)
            if evaluation is None or not evaluation.validation:
                raise FileNotFoundError(f"selection run {arm.name} seed {seed} has no validation evaluation yet.")
            per_seed[str(seed)] = selection_score(evaluation, endpoint, k)
        scores[setting_label(temperature)] = per_seed
    means = {label: mean_interval(list(per_seed.values())) for label, per_seed in scores.items()}
    best = max(
        range(len(selection.temperatures)), key=lambda i: (means[setting_label(selection.temperatures[i])].mean, -i)
    )
    outcome = SelectionOutcome(
        arm=selection.arm,
        criterion=criterion(endpoint, k),
        seeds=list(selection.seeds),
        scores=scores,
        means={label: interval.to_dict() for label, interval in means.items()},
        chosen_temperature=selection.temperatures[best],
    )
    path = selection_root(output_dir) / SELECTION_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(outcome.to_dict(), indent=2))
    return outcome
