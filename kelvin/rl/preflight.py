"""Checks that can run before any work (model loading, warm-up, training), so that bad input fails in a second with
a message naming the file or field, and never after an old run was replaced."""

from __future__ import annotations

import sys
from pathlib import Path

from kelvin.config import ConfigError, KelvinConfig, to_dict
from kelvin.controllers.registry import CONTROLLERS
from kelvin.models.loading import check_model_folder
from kelvin.rewards.functions import resolve_reward_function
from kelvin.rl.checkpoint import CheckpointError, complete_checkpoints, read_state
from kelvin.rl.resume import compare_resume_config
from kelvin.tasks import build_task


def check_before_work(config: KelvinConfig) -> None:
    """The model folder (config.json, weights, tokenizer), the task's data files and every reward function's
    import."""
    if config.model.path:
        check_model_folder(Path(config.model.path), "model.path")
    build_task(config)  # reads the data files: a missing file or one without usable rows fails here, named
    for i, spec in enumerate(config.reward.functions):
        try:
            resolve_reward_function(spec)
        except ValueError as err:
            raise ConfigError(str(err).replace("reward.functions entry", f"reward.functions[{i}]", 1)) from None


def check_resume(output: Path, config: KelvinConfig) -> list[str]:
    """Compare `config` with the newest complete checkpoint's (refused differences raise ConfigError); returns the
    allowed differences. A checkpoint whose state cannot be read is left to the trainer's fallback."""
    for path in reversed(complete_checkpoints(output / "checkpoints")):
        try:
            saved = read_state(path).get("config")
        except Exception:  # unreadable: the trainer names it and falls back to the previous one
            continue
        if isinstance(saved, dict):
            uses_steps = CONTROLLERS[config.controller.name].controller.uses_total_steps
            allowed = compare_resume_config(saved, to_dict(config), uses_steps)
            if allowed:
                print("kelvin train: resuming with changes allowed on resume: " + "; ".join(allowed), file=sys.stderr)
            return allowed
    return []


__all__ = ["CheckpointError", "check_before_work", "check_resume"]
