"""trainer.report_to: a 2-step run logs the metrics.jsonl names and values to a local MLflow store and TensorBoard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kelvin.config import ConfigError, load_config
from kelvin.rl import trackers
from kelvin.rl.trackers import check_available, flat_params, loggable
from tests.run_settings import TWO_STEP_RUN


def test_two_step_run_reaches_mlflow_and_tensorboard_with_the_jsonl_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kelvin.rl.trainer import Trainer

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    config = load_config(None, [*TWO_STEP_RUN, "trainer.report_to=[tensorboard, mlflow]", "trainer.log_completions=0"])
    Trainer(config, out, quiet=True).train(progress=False)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected: dict[str, dict[int, float]] = {}
    for row in rows:
        for key, value in loggable(row).items():
            expected.setdefault(key, {})[row["step"]] = value
    assert {"reward", "accuracy", "temperature/mean", "eval/accuracy"} <= set(expected)

    client = MlflowClient(tracking_uri=f"sqlite:///{(out / 'mlflow.db').resolve()}")
    (experiment,) = client.search_experiments(filter_string="name = 'kelvin'")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "run" and run.data.params["trainer.steps"] == "2"
    assert set(run.data.metrics) == set(expected)
    for key, by_step in expected.items():
        logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert logged.keys() == by_step.keys(), key
        assert all(math.isclose(logged[s], v, rel_tol=1e-6, abs_tol=1e-9) for s, v in by_step.items()), key

    (events,) = {p.parent for p in (out / "tensorboard").rglob("events.out.tfevents.*")}
    board = EventAccumulator(str(events))
    board.Reload()
    assert set(board.Tags()["scalars"]) == set(expected)
    assert [e.step for e in board.Scalars("reward")] == sorted(expected["reward"])


def test_tracker_inputs_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    assert flat_params({"a": {"b": 1, "c": [1, 2], "d": None}, "e": "x"}) == {
        "a.b": 1,
        "a.c": "[1, 2]",
        "a.d": "None",
        "e": "x",
    }
    assert loggable({"step": 3, "reward": 0.5, "bad": float("nan"), "flag": True, "name": "x"}) == {"reward": 0.5}
    monkeypatch.setattr(trackers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install 'wandb'"):
        check_available(["wandb"])
    with pytest.raises(ConfigError, match="report_to"):
        load_config(None, ["trainer.report_to=[tensorbord]"])


def test_wandb_is_offline_unless_told_otherwise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """wandb is not installed here; what Kelvin hands to wandb.init is checked without starting it."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    tracker = trackers._build("wandb", "kelvin", "run-1", tmp_path)
    assert tracker.run_name == "kelvin"  # accelerate passes it as wandb.init(project=...)
    assert tracker.init_kwargs == {"name": "run-1", "dir": str(tmp_path), "mode": "offline"}
    monkeypatch.setenv("WANDB_MODE", "online")
    assert trackers._build("wandb", "kelvin", "run-1", tmp_path).init_kwargs["mode"] == "online"
