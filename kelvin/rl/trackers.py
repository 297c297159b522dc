"""Experiment trackers (`trainer.report_to`) through accelerate's tracker classes: tensorboard, wandb, mlflow, trackio.

Every tracker gets the same metric names and values as metrics.jsonl (finite numbers only; `step` is the x-axis).
Where each one writes, without any network by default (nothing in Kelvin reads the network at run time):

    tensorboard  <output_dir>/tensorboard (event files)
    wandb        <output_dir>/wandb, offline mode unless $WANDB_MODE says otherwise (`wandb sync` uploads later)
    mlflow       $MLFLOW_TRACKING_URI, else a SQLite store at <output_dir>/mlflow.db (no server); experiment = the
                 project name; `mlflow ui --backend-store-uri sqlite:///<output_dir>/mlflow.db` shows it
    trackio      trackio's local store (its own default folder), project = the project name

The configuration is logged as flat `section.field` parameters (config.yaml in the run folder has the tree).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPORT_TO = ("tensorboard", "wandb", "mlflow", "trackio")
# The pip package that provides each tracker, for the error when it is missing.
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "kelvin[mlflow]", "trackio": "trackio"}
_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def flat_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str | int | float | bool]:
    """{"trainer.steps": 100, ...}: scalars kept, lists and None written as text (trackers take scalars only)."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def loggable(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics a tracker can plot: finite numbers, without `step` (it is the x-axis)."""
    return {
        key: float(value)
        for key, value in metrics.items()
        if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def check_available(report_to: Sequence[str]) -> None:
    """Fail before any work when a tracker's package is missing, with the install command."""
    for name in report_to:
        if name not in REPORT_TO:
            raise ValueError(f"trainer.report_to entry {name!r} is unknown; choose from {list(REPORT_TO)}.")
        if importlib.util.find_spec(_MODULES[name]) is None:
            raise ImportError(
                f"trainer.report_to includes {name!r} but its package is not installed: pip install "
                f"'{_PACKAGES[name]}', or remove it from trainer.report_to."
            )


def _build(name: str, project: str, run_name: str, output_dir: Path) -> Any:
    from accelerate import tracking

    if name == "tensorboard":
        return tracking.TensorBoardTracker("tensorboard", str(output_dir))
    if name == "wandb":
        mode = os.environ.get("WANDB_MODE", "offline")
        return tracking.WandBTracker(project, name=run_name, dir=str(output_dir), mode=mode)
    if name == "mlflow":
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # SQLite, not MLflow's file store: the file store maps 'entropy/at_T1' to a path under a file named
            # 'entropy' (both are Kelvin metrics) and fails; MLflow 3 also keeps it in maintenance mode.
            mlflow.set_tracking_uri(f"sqlite:///{(output_dir / 'mlflow.db').resolve()}")
        return tracking.MLflowTracker(experiment_name=project, run_name=run_name)
    return tracking.TrackioTracker(project, name=run_name)


class Trackers:
    """The trackers of one run: `log(metrics)` after every step, `close()` at the end. Build it on the main process
    only; with an empty `report_to` every call does nothing."""

    def __init__(
        self,
        report_to: Sequence[str],
        output_dir: str | Path,
        config: Mapping[str, Any] | None = None,
        project: str = "kelvin",
        run_name: str | None = None,
    ) -> None:
        check_available(report_to)
        output_dir = Path(output_dir)
        self.trackers = [
            _build(name, project, run_name or output_dir.name, output_dir) for name in dict.fromkeys(report_to)
        ]
        for tracker in self.trackers:
            tracker.start()
            # TensorBoard's hparams view would add a second event folder; config.yaml already holds the config.
            if config is not None and tracker.name != "tensorboard":
                tracker.store_init_configuration(flat_params(config))

    def log(self, metrics: Mapping[str, Any]) -> None:
        values = loggable(metrics)
        step = int(metrics["step"])
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
