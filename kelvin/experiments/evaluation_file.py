"""A run's evaluation file (evaluation.json in its run folder), typed: written by kelvin/experiments/final_eval.py,
read by the selection and the report."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------------------------------
# The file
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

    settings: dict[str, Any]  # the EvaluationSettings and plan it was made with (reused only when they match)
    arm: str | None  # None: absent from the file read
    seed: int | None
    results: dict[str, SettingEvaluation]  # setting label -> evaluation on the test split
    validation: dict[str, SettingEvaluation] = field(default_factory=dict)  # ... on the validation split

    def to_dict(self) -> dict[str, Any]:
        run = {key: value for key, value in (("arm", self.arm), ("seed", self.seed)) if value is not None}
        out = {"settings": self.settings, **run, "results": _settings_to_dict(self.results)}
        if self.validation:
            out["validation"] = _settings_to_dict(self.validation)
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> RunEvaluation:
        return RunEvaluation(
            settings=data["settings"],
            arm=data.get("arm"),
            seed=data.get("seed"),
            results=_settings_from_dict(data["results"]),
            validation=_settings_from_dict(data.get("validation", {})),
        )

    @staticmethod
    def read(path: Path) -> RunEvaluation | None:
        return RunEvaluation.from_dict(json.loads(path.read_text())) if path.is_file() else None


def _settings_to_dict(entries: dict[str, SettingEvaluation]) -> dict[str, Any]:
    return {
        label: {
            "temperature": entry.temperature,
            "tasks": {name: task.to_dict() for name, task in entry.tasks.items()},
            "metrics": entry.metrics,
        }
        for label, entry in entries.items()
    }


def _settings_from_dict(data: dict[str, Any]) -> dict[str, SettingEvaluation]:
    return {
        label: SettingEvaluation(
            temperature=entry.get("temperature"),
            tasks={name: TaskEvaluation(**task) for name, task in entry["tasks"].items()},
            metrics=entry["metrics"],
        )
        for label, entry in data.items()
    }
