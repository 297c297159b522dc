"""What `--resume` may change: the resolved config against the one saved in the checkpoint.

A resumed run must be the run that was started. Differences that change what is trained (learning rate, group size,
loss, controller, data, model, seed, ...) are refused with every difference shown; differences that cannot change the
trajectory (how long to run, how often to log, evaluate or save, where to run) are allowed and listed.
"""

from __future__ import annotations

from typing import Any

from kelvin.config import ConfigError, KelvinConfig, to_dict

# Fields that do not change the training trajectory. trainer.steps only extends or shortens the run: with a cosine
# lr schedule or a controller whose temperatures depend on it it also reshapes what is left, so it is refused there.
CHANGEABLE = {
    "trainer.steps": "how many steps to run",
    "trainer.eval_every": "evaluation only",
    "trainer.eval_temperature": "evaluation only",
    "task.eval_size": "evaluation only",
    "trainer.save_every": "checkpointing only",
    "trainer.keep_last": "checkpointing only",
    "trainer.log_completions": "logging only",
    "trainer.tensorboard": "logging only",
    "trainer.torch_threads": "speed only",
    "trainer.device": "where it runs",
    "reward.timeout_s": "time limit of reward calls",
}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _steps_reshape_the_run(config: dict[str, Any], controller_uses_steps: bool) -> str | None:
    flat = _flatten(config)
    if flat.get("optim.lr_scheduler") == "cosine":
        return "optim.lr_scheduler=cosine spans trainer.steps"
    if controller_uses_steps:
        return f"controller.name={flat.get('controller.name')} spans trainer.steps"
    return None


def defaults() -> dict[str, Any]:
    """Every setting's default, flattened like a saved config."""
    return _flatten(to_dict(KelvinConfig()))


def compare_resume_config(
    saved: dict[str, Any], current: dict[str, Any], controller_uses_steps: bool = False
) -> list[str]:
    """The allowed differences as 'field: old -> new (why allowed)'; raises ConfigError listing the refused ones.
    `controller_uses_steps`: the run's controller depends on trainer.steps (TemperatureController.uses_total_steps)."""
    old, new = _flatten(saved), _flatten(current)
    fresh = defaults() if set(new) - set(old) else {}  # settings the saved run predates, at their defaults
    refused: list[str] = []
    allowed: list[str] = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, "<absent>"), new.get(key, "<absent>")
        if before == after:
            continue
        line = f"{key}: {before!r} -> {after!r}"
        if key not in old and after == fresh.get(key, "<no default>"):
            # a setting added to Kelvin after the run started, at its default: the behaviour the run had without it
            allowed.append(f"{line} (a newer setting at its default)")
            continue
        reshaping = _steps_reshape_the_run(saved, controller_uses_steps) if key == "trainer.steps" else None
        if key in CHANGEABLE and reshaping is None:
            allowed.append(f"{line} ({CHANGEABLE[key]})")
        else:
            refused.append(line + (f" ({reshaping})" if reshaping else ""))
    if refused:
        shown = "\n  ".join(refused)
        also = ("\n  allowed: " + "; ".join(allowed)) if allowed else ""
        raise ConfigError(
            f"--resume with a config that changes the run; refused:\n  {shown}{also}\n"
            "Resume with the run's own config (its config.yaml), or start a new run in another --output-dir. "
            f"Only these may differ on resume: {', '.join(sorted(CHANGEABLE))}."
        )
    return allowed
