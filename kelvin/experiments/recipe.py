"""Comparison recipes: a base config, arms that differ only in the controller, seeds and evaluation settings.

    name: demo
    seeds: [0, 1, 2]
    evaluation: {temperatures: [0, 0.6, 1.0], primary_temperature: 1.0, k: 4, size: 256}
    base:   {model: ..., task: ..., trainer: {steps: 40}, ...}          # a normal Kelvin config tree
    arms:
      fixed-1.0: {controller: {name: fixed}, sampling: {temperature: 1.0}}
      tampo:     {controller: {name: tampo}}

An arm may only override `controller.*` and `sampling.temperature` (so the arms share the model, data order, seeds,
batch, steps and evaluation); anything else is an error unless the recipe says `allow_non_controller_overrides: true`.
Every arm must also take the same number of policy-optimizer updates (a controller can skip some: IntroLLM's
alternating head-only steps), so each controller's `comparison_defaults` apply unless the recipe sets those fields
(IntroLLM: joint updates), and unequal budgets are an error unless the recipe says `allow_unequal_budgets: true`
(or allows non-controller overrides).
Every arm runs once per seed with `trainer.seed` = seed; controllers with their own random generator (TAMPO's
meta-policy, IntroLLM's head) get the same seed unless the recipe sets theirs explicitly. `task.seed` (the data
order) is shared by every arm and seed, so seed s of two arms sees the same prompts: results are paired by seed.

This module only reads and checks recipes; `kelvin.experiments.runner` runs them and `kelvin.experiments.report`
writes the report.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kelvin.config import (
    ConfigError,
    KelvinConfig,
    TaskConfig,
    build_section,
    config_from_dict,
    controller_section,
    doc,
    read_yaml,
    set_dotted,
    to_dict,
)

RECIPE_KEYS = (
    "name",
    "description",
    "base",
    "arms",
    "seeds",
    "evaluation",
    "allow_non_controller_overrides",
    "allow_unequal_budgets",
)
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
CONFIG_SECTIONS = tuple(f.name for f in dataclasses.fields(KelvinConfig))


@dataclass
class EvaluationSettings:
    """How every final model is evaluated (identically for every arm and seed)."""

    temperatures: list[float] = doc([0.0, 0.6, 1.0], "Evaluation temperatures; 0 decodes greedily.")
    primary_temperature: float = doc(
        1.0, "The temperature whose avg@k is the comparison's headline 'final accuracy' (one of `temperatures`)."
    )
    k: int = doc(4, "Samples per problem at each temperature: avg@k and unbiased pass@k come from these.")
    size: int = doc(
        256, "Held-out problems evaluated: the first `size` of each evaluation task's test set; 0 = all of them."
    )
    tasks: list[str] = doc(
        [],
        "Task names to evaluate on (e.g. the benchmarks math500, aime24); empty = the training task's held-out set. "
        "With several tasks the headline numbers are unweighted means over tasks (the papers' 'Average').",
    )
    top_p: float = doc(1.0, "Nucleus threshold of evaluation sampling (1.0 = off).")
    max_completion_length: int = doc(0, "Tokens per evaluation completion; 0 = the base's sampling value.")
    batch_size: int = doc(256, "Sequences sampled together during evaluation.")
    seed: int = doc(0, "Seed of evaluation sampling (the same for every run, so runs are evaluated alike).")
    learned_temperature: bool = doc(
        True,
        "Also evaluate arms whose controller learns its temperature (IntroLLM) with the temperature it chooses "
        "('learned').",
    )
    token_samples: int = doc(
        64,
        "Arms with a learned temperature: held-out prompts sampled with the learned tau to record (tau, entropy) "
        "per token; 0 = off.",
    )


@dataclass
class Arm:
    name: str
    overrides: dict[str, Any]
    controller: str  # the resolved controller name, e.g. "tampo"


@dataclass
class Comparison:
    name: str
    description: str
    base: dict[str, Any]
    arms: list[Arm]
    seeds: list[int]
    evaluation: EvaluationSettings
    allow_non_controller_overrides: bool = False
    allow_unequal_budgets: bool = False

    def config(self, arm: Arm, seed: int) -> KelvinConfig:
        """The training config of one arm at one seed."""
        return config_from_dict(arm_seed_tree(self.base, arm.overrides, seed))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "seeds": list(self.seeds),
            "allow_non_controller_overrides": self.allow_non_controller_overrides,
            "allow_unequal_budgets": self.allow_unequal_budgets,
            "evaluation": dataclasses.asdict(self.evaluation),
            "arms": {arm.name: {"controller": arm.controller, "overrides": arm.overrides} for arm in self.arms},
            "base": self.base,
        }


# --------------------------------------------------------------------------------------------------------------------
# Trees: merging, flattening, overrides
# --------------------------------------------------------------------------------------------------------------------


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `overrides` applied: mappings merge key by key, everything else is replaced."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def dotted_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """Every leaf of a nested mapping as a dotted key ('controller.tampo.ema_alpha')."""
    keys: list[str] = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            keys.extend(dotted_keys(value, f"{path}."))
        else:
            keys.append(path)
    return keys


def is_controller_key(dotted: str) -> bool:
    """Whether an arm may change this key without breaking 'arms differ only in the controller'."""
    return dotted == "controller" or dotted.startswith("controller.") or dotted == "sampling.temperature"


def non_controller_overrides(overrides: dict[str, Any]) -> list[str]:
    return [key for key in dotted_keys(overrides) if not is_controller_key(key)]


def has_dotted(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def controller_seed_keys() -> list[str]:
    """Dotted keys of the controllers' own seeds (controller.tampo.seed, controller.introspective.seed, ...)."""
    keys = []
    for section in dataclasses.fields(KelvinConfig().controller):  # the registered controllers' sections
        sub = section.default_factory() if callable(section.default_factory) else None  # type: ignore[misc]
        if sub is not None and dataclasses.is_dataclass(sub) and hasattr(sub, "seed"):
            keys.append(f"controller.{section.name}.seed")
    return keys


def arm_seed_tree(base: dict[str, Any], overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    """The config tree of one arm at one seed: base + arm overrides, trainer.seed = seed, and controller seeds = seed
    unless the base or the arm sets them."""
    tree = deep_merge(base, overrides)
    set_dotted(tree, "trainer.seed", seed)
    for key in controller_seed_keys():
        if not has_dotted(tree, key):
            set_dotted(tree, key, seed)
    # Comparison defaults of the arm's controller (IntroLLM: joint updates, for an equal policy-update budget).
    config = config_from_dict(tree)
    name = config.controller.name
    for field_name, value in controller_section(config).comparison_defaults().items():
        if not has_dotted(tree, f"controller.{name}.{field_name}"):
            set_dotted(tree, f"controller.{name}.{field_name}", value)
    return tree


def split_arm_key(dotted: str, item: str) -> tuple[str, str]:
    """'fixed-1.2.sampling.temperature' -> ('fixed-1.2', 'sampling.temperature'): arm names may hold dots, so the
    arm name ends where a config section (controller, sampling, ...) begins."""
    parts = dotted.split(".")
    for index, part in enumerate(parts[1:], start=1):
        if part in CONFIG_SECTIONS:
            return ".".join(parts[:index]), ".".join(parts[index:])
    raise ConfigError(
        f"Override '{item}' must name an arm and a config key, e.g. arms.fixed-1.2.sampling.temperature=1.2."
    )


def apply_overrides(recipe: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Dotted `key=value` overrides on a recipe tree. Keys starting with a config section (trainer., sampling., ...)
    go to `base`; `evaluation.*`, `seeds`, `arms.<arm>.*` and the other recipe keys go to the recipe itself."""
    tree = copy.deepcopy(recipe)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' must look like section.field=value, e.g. trainer.steps=50.")
        key, raw = (part.strip() for part in item.split("=", 1))
        value = yaml.safe_load(raw) if raw != "" else ""
        head = key.split(".", 1)[0]
        if head in CONFIG_SECTIONS:
            set_dotted(tree.setdefault("base", {}), key, value)
        elif head == "arms" and key != "arms":
            arm, rest = split_arm_key(key[len("arms.") :], item)
            arms = tree.get("arms")
            if not isinstance(arms, dict):
                arms = tree["arms"] = {}
            node = arms.get(arm)
            if not isinstance(node, dict):
                node = arms[arm] = {}
            set_dotted(node, rest, value)
        elif head in RECIPE_KEYS:
            set_dotted(tree, key, value)
        else:
            raise ConfigError(
                f"Override '{item}': '{head}' is neither a config section {list(CONFIG_SECTIONS)} nor a recipe key "
                f"{list(RECIPE_KEYS)}."
            )
    return tree


# --------------------------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------------------------


def load_comparison(
    recipe: str | Path, overrides: list[str] | None = None, seeds: int | None = None, steps: int | None = None
) -> Comparison:
    """Read, override and validate a comparison recipe. `seeds` = N runs seeds 0..N-1; `steps` sets trainer.steps."""
    path = Path(recipe)
    tree = read_yaml(path, "Comparison recipe")  # line/column errors, duplicate keys refused
    if not isinstance(tree, dict):
        raise ConfigError(f"Comparison recipe '{recipe}' must be a mapping with base:, arms:, seeds:, evaluation:.")
    extra = list(overrides or [])
    if steps is not None:
        extra.append(f"trainer.steps={steps}")
    tree = apply_overrides(tree, extra)
    if seeds is not None:
        if seeds < 1:
            raise ConfigError(f"--seeds {seeds} must be >= 1.")
        tree["seeds"] = list(range(seeds))
    return comparison_from_tree(tree, default_name=path.stem)


def comparison_from_tree(tree: dict[str, Any], default_name: str = "comparison") -> Comparison:
    unknown = [key for key in tree if key not in RECIPE_KEYS]
    if unknown:
        raise ConfigError(f"Unknown comparison recipe key(s) {unknown}: a comparison recipe has {list(RECIPE_KEYS)}.")
    base = tree.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"base: must be a Kelvin config tree (model:, task:, trainer:, ...), got {base!r}.")
    allow = tree.get("allow_non_controller_overrides", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"allow_non_controller_overrides={allow!r} must be true or false.")
    seeds = _seeds(tree.get("seeds", [0]))
    evaluation = _evaluation(tree.get("evaluation") or {})
    arms = _arms(tree.get("arms"), base, allow, seeds)
    allow_unequal = tree.get("allow_unequal_budgets", False)
    if not isinstance(allow_unequal, bool):
        raise ConfigError(f"allow_unequal_budgets={allow_unequal!r} must be true or false.")
    if not (allow_unequal or allow):  # arms that change trainer.steps on purpose change the budget on purpose
        check_equal_budgets(base, arms, seeds[0])
    return Comparison(
        name=str(tree.get("name") or default_name),
        description=str(tree.get("description") or ""),
        base=base,
        arms=arms,
        seeds=seeds,
        evaluation=evaluation,
        allow_non_controller_overrides=allow,
        allow_unequal_budgets=allow_unequal,
    )


def policy_update_budget(config: KelvinConfig) -> int:
    """Policy-optimizer updates a run of this config takes: its policy-update steps x loss.num_iterations."""
    steps = controller_section(config).policy_update_steps(config.trainer.steps)
    return steps * config.loss.num_iterations


def check_equal_budgets(base: dict[str, Any], arms: list[Arm], seed: int) -> None:
    """Every arm must take the same number of policy-optimizer updates, or the comparison measures the budget."""
    budgets = {
        arm.name: policy_update_budget(config_from_dict(arm_seed_tree(base, arm.overrides, seed))) for arm in arms
    }
    if len(set(budgets.values())) > 1:
        listed = ", ".join(f"{name}: {count}" for name, count in budgets.items())
        raise ConfigError(
            f"The arms take different numbers of policy-optimizer updates ({listed}), so the comparison would "
            "measure the budget, not the controller. Give every arm the same (e.g. controller.introspective.joint: "
            "true, the comparison default), or set allow_unequal_budgets: true to compare unequal budgets on purpose."
        )


def _seeds(raw: Any) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        raise ConfigError(f"seeds={raw!r} must be a non-empty list of integers, e.g. seeds: [0, 1, 2].")
    if len(set(raw)) != len(raw):
        raise ConfigError(f"seeds={raw} lists a seed twice; list each seed once.")
    return list(raw)


def _evaluation(raw: dict[str, Any]) -> EvaluationSettings:
    settings: EvaluationSettings = build_section(EvaluationSettings, raw, "evaluation.")
    if not settings.temperatures or any(t < 0 for t in settings.temperatures):
        raise ConfigError(
            f"evaluation.temperatures={settings.temperatures} must be a non-empty list of values >= 0 (0 = greedy)."
        )
    if len(set(settings.temperatures)) != len(settings.temperatures):
        raise ConfigError(f"evaluation.temperatures={settings.temperatures} lists a temperature twice.")
    if settings.primary_temperature not in settings.temperatures:
        raise ConfigError(
            f"evaluation.primary_temperature={settings.primary_temperature} is not one of evaluation.temperatures="
            f"{settings.temperatures}; add it there or pick one of them."
        )
    checks = [
        (settings.k >= 1, f"evaluation.k={settings.k} must be >= 1 (samples per problem)."),
        (settings.size >= 0, f"evaluation.size={settings.size} must be >= 0 (held-out problems; 0 = all)."),
        (0 < settings.top_p <= 1, f"evaluation.top_p={settings.top_p} must be in (0, 1]; 1.0 disables it."),
        (settings.batch_size >= 1, f"evaluation.batch_size={settings.batch_size} must be >= 1."),
        (settings.max_completion_length >= 0, "evaluation.max_completion_length must be >= 0 (0 = the base's)."),
        (settings.token_samples >= 0, f"evaluation.token_samples={settings.token_samples} must be >= 0."),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    for index, name in enumerate(settings.tasks):
        build_section(TaskConfig, {"name": name}, f"evaluation.tasks[{index}]: task.")  # an unknown name fails here
    return settings


def _arms(raw: Any, base: dict[str, Any], allow: bool, seeds: list[int]) -> list[Arm]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            "arms: must map arm names to overrides of base, e.g. arms: {fixed-1.0: {controller: {name: fixed}}}."
        )
    arms = []
    for name, overrides in raw.items():
        name = str(name)
        if not ARM_NAME.match(name):
            raise ConfigError(
                f"Arm name '{name}' must be letters, digits, '.', '_' or '-' (it names a folder), e.g. 'fixed-1.0'."
            )
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"Arm '{name}': its overrides must be a mapping, got {overrides!r}.")
        offending = non_controller_overrides(overrides)
        if offending and not allow:
            raise ConfigError(
                f"Arm '{name}' overrides {', '.join(repr(k) for k in offending)}: arms may only change controller.* "
                "and sampling.temperature, so that they differ only in the controller. Move the setting to base: "
                "(all arms), or set allow_non_controller_overrides: true to compare other settings on purpose."
            )
        try:
            config = config_from_dict(arm_seed_tree(base, overrides, seeds[0]))
        except ConfigError as err:
            raise ConfigError(f"Arm '{name}': {err}") from None
        arms.append(Arm(name=name, overrides=overrides, controller=config.controller.name))
    return arms


def config_differences(expected: dict[str, Any], found: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config trees (for 'this run was trained differently')."""
    keys = list(dict.fromkeys([*expected, *found]))
    out: list[str] = []
    for key in keys:
        path = f"{prefix}{key}"
        a, b = expected.get(key), found.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out.extend(config_differences(a, b, f"{path}."))
        elif a != b:
            out.append(f"{path}: {b!r} in the run, {a!r} now")
    return out


# Settings that do not change what a run learns; a finished run is reused even if they differ.
NON_RESULT_KEYS = (
    "trainer.device",
    "trainer.torch_threads",
    "trainer.tensorboard",
    "trainer.report_to",
    "trainer.log_completions",
    "trainer.save_every",
    "trainer.keep_last",
)


def result_tree(config: KelvinConfig | dict[str, Any]) -> dict[str, Any]:
    tree = copy.deepcopy(config) if isinstance(config, dict) else to_dict(config)
    for key in NON_RESULT_KEYS:
        section, field_name = key.split(".")
        tree.get(section, {}).pop(field_name, None)
    return tree


# --------------------------------------------------------------------------------------------------------------------
# Folder layout of a comparison (`kelvin.experiments.runner` writes it, `kelvin.experiments.report` reads it)
# --------------------------------------------------------------------------------------------------------------------

COMPARISON_FILE = "comparison.json"  # the resolved recipe of the latest invocation
EVALUATION_FILE = "evaluation.json"  # per run: the final model's evaluation
TOKEN_SAMPLES_FILE = "token_samples.json"  # per IntroLLM run: (tau, entropy) of sampled tokens
WARMUP_FILE = "warmup.json"  # per run from a tiny model: the warm-up's recipe and weights digest it started from


def run_folder(root: str | Path, arm: str, seed: int) -> Path:
    return Path(root) / "runs" / arm / f"seed-{seed}"
