"""Comparison recipes: a base config, arms that differ only in the controller, seeds and evaluation settings.

    name: demo
    seeds: [0, 1, 2]
    evaluation: {primary: greedy, temperatures: [0, 0.6, 1.0], k: 4, size: 256}
    selection:  {arm: fixed-best, temperatures: [0.8, 1.0, 1.2], seeds: [100, 101, 102]}     # optional
    base:   {model: ..., task: ..., trainer: {steps: 40}, ...}          # a normal Kelvin config tree
    arms:
      fixed-best: {controller: {name: fixed}}
      tampo:      {controller: {name: tampo}}

An arm may only override `controller.*` and `sampling.temperature` (so the arms share the model, data order, seeds,
batch, steps and evaluation); anything else is an error unless the recipe says `allow_non_controller_overrides: true`.
Every arm must also take the same number of policy-optimizer updates (a controller can skip some: IntroLLM's
alternating head-only steps), so each controller's `comparison_defaults` apply unless the recipe sets those fields
(IntroLLM: joint updates), and unequal budgets are an error unless the recipe says `allow_unequal_budgets: true`
(or allows non-controller overrides).

What a seed varies (docs/compare.md): run s of every arm sets `trainer.seed` = s (sampling, and the controllers' own
generators unless the recipe sets their seeds) and, unless `vary_data_order: false`, `task.seed` = base task.seed + s
(the order of the training prompts), with `task.eval_seed` pinned to the base's so every run is evaluated on the same
held-out problems. Seed s of two arms is therefore the same data order and the same sampler seed: results are paired
by seed, and the seeds replicate what a user's rerun would vary.

The primary endpoint is declared in the recipe (`evaluation.primary`: greedy, tuned, or a common T=<x>) before the
runs; `selection:` chooses one fixed arm's temperature on the validation split, with seeds disjoint from the
comparison's, and that arm is then trained afresh on the comparison seeds (no winner's curse).

This module only reads and checks recipes; `kelvin.experiments.runner` runs them and `kelvin.experiments.report`
writes the report.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

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
from kelvin.controllers import is_baseline

RECIPE_KEYS = (
    "name",
    "description",
    "base",
    "arms",
    "seeds",
    "evaluation",
    "selection",
    "vary_data_order",
    "allow_non_controller_overrides",
    "allow_unequal_budgets",
)
DEFAULT_TASK_SEED = 1234  # task.seed when the base does not set it (TaskConfig's default)
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
CONFIG_SECTIONS = tuple(f.name for f in dataclasses.fields(KelvinConfig))


GREEDY, TUNED = "greedy", "tuned"


@dataclass(frozen=True)
class Endpoint:
    """The number a comparison is decided on, per run: greedy accuracy, the run's avg@k at its own validation-best
    temperature ('tuned'), or its avg@k at one common temperature ('T=<x>')."""

    kind: Literal["greedy", "tuned", "common"]
    temperature: float | None = None  # the common temperature

    @property
    def name(self) -> str:
        return f"T={self.temperature:g}" if self.kind == "common" else self.kind

    @staticmethod
    def parse(text: str) -> Endpoint:
        value = str(text).strip()
        if value in (GREEDY, TUNED):
            return Endpoint(value)  # type: ignore[arg-type]
        if value.startswith("T="):
            try:
                temperature = float(value[2:])
            except ValueError:
                temperature = -1.0
            if temperature == 0:
                raise ConfigError(f"evaluation.primary={value!r}: T=0 is greedy decoding; write primary: greedy.")
            if temperature > 0:
                return Endpoint("common", temperature)
        raise ConfigError(
            f"evaluation.primary={value!r} must be 'greedy' (accuracy of the greedy decode), 'tuned' (avg@k at each "
            "run's validation-best temperature) or 'T=<x>' (avg@k at one common temperature, e.g. T=1.0)."
        )


@dataclass
class EvaluationSettings:
    """How every final model is evaluated (identically for every arm and seed)."""

    primary: str = doc(
        GREEDY,
        "The comparison's primary endpoint, declared before the runs: 'greedy' (accuracy of the greedy decode, which "
        "does not depend on the temperature scale an arm trained its logits for), 'tuned' (each run's avg@k at its "
        "own best temperature among `temperatures`, chosen on the task's validation split, then measured on the test "
        "split) or 'T=<x>' (avg@k at one common temperature, what the papers report; it favours arms trained near "
        "x). docs/compare.md argues the default.",
    )
    temperatures: list[float] = doc(
        [0.0, 0.6, 1.0],
        "Evaluation temperatures on the test split (0 decodes greedily): the secondary table at common temperatures, "
        "and the candidates of the 'tuned' endpoint (those above 0). Greedy is always evaluated when it is primary.",
    )
    tuned: bool = doc(
        False,
        "Also report the 'tuned' endpoint as a secondary one (implied when it is primary): each run's temperature is "
        "chosen on the validation split among `temperatures` above 0 (and its learned temperature, for arms that learn "
        "one), costing one validation sweep per run.",
    )
    k: int = doc(4, "Samples per problem at each temperature: avg@k and unbiased pass@k come from these.")
    size: int = doc(
        256, "Held-out problems evaluated: the first `size` of each evaluation task's test set; 0 = all of them."
    )
    validation_size: int = doc(
        0, "Validation problems for choosing a temperature ('tuned', selection:); 0 = the same as `size`."
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

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(self.primary)

    @property
    def wants_tuned(self) -> bool:
        return self.tuned or self.endpoint.kind == "tuned"

    @property
    def tuning_temperatures(self) -> list[float]:
        """The fixed temperatures the 'tuned' endpoint chooses among (validation split)."""
        return [t for t in self.temperatures if t > 0]

    @property
    def test_temperatures(self) -> list[float]:
        """Every fixed temperature evaluated on the test split: `temperatures`, with greedy first when primary."""
        if self.endpoint.kind == "greedy" and 0 not in self.temperatures:
            return [0.0, *self.temperatures]
        return list(self.temperatures)


@dataclass
class Selection:
    """Choosing one fixed arm's temperature before the comparison, on the validation split and on seeds disjoint from
    the comparison's: the chosen arm is then trained afresh on the comparison's seeds, so it carries no selection luck
    into the test (the winner's curse of reusing the selection runs)."""

    arm: str = doc("", "The fixed-temperature arm whose sampling.temperature is chosen (it must use controller fixed).")
    temperatures: list[float] = doc([], "Candidate temperatures (> 0), each trained at every selection seed.")
    seeds: list[int] = doc([], "Seeds of the selection runs; none may be a comparison seed (e.g. 100, 101, ...).")


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
    selection: Selection | None = None
    vary_data_order: bool = True
    allow_non_controller_overrides: bool = False
    allow_unequal_budgets: bool = False
    # The temperature `selection` chose for its arm (None until the selection runs are evaluated)
    selected_temperature: float | None = None

    def config(self, arm: Arm, seed: int) -> KelvinConfig:
        """The training config of one arm at one seed."""
        return config_from_dict(arm_seed_tree(self.base, arm.overrides, seed, self.vary_data_order))

    def arm(self, name: str) -> Arm:
        return next(arm for arm in self.arms if arm.name == name)

    def selection_arms(self) -> list[Arm]:
        """One arm per candidate temperature of `selection` ('<arm>-T<x>'), each the selected arm at that T."""
        if self.selection is None:
            return []
        chosen = self.arm(self.selection.arm)
        return [
            Arm(
                name=f"{chosen.name}-T{t:g}",
                overrides=deep_merge(chosen.overrides, {"sampling": {"temperature": t}}),
                controller=chosen.controller,
            )
            for t in self.selection.temperatures
        ]

    def with_selected_temperature(self, temperature: float) -> Comparison:
        """This comparison with the selection's arm set to the chosen temperature."""
        assert self.selection is not None
        arms = [
            Arm(a.name, deep_merge(a.overrides, {"sampling": {"temperature": temperature}}), a.controller)
            if a.name == self.selection.arm
            else a
            for a in self.arms
        ]
        return dataclasses.replace(self, arms=arms, selected_temperature=temperature)

    def to_dict(self) -> dict[str, Any]:
        selection = None
        if self.selection is not None:
            selection = {**dataclasses.asdict(self.selection), "chosen_temperature": self.selected_temperature}
        return {
            "name": self.name,
            "description": self.description,
            "seeds": list(self.seeds),
            "vary_data_order": self.vary_data_order,
            "allow_non_controller_overrides": self.allow_non_controller_overrides,
            "allow_unequal_budgets": self.allow_unequal_budgets,
            "evaluation": dataclasses.asdict(self.evaluation),
            "selection": selection,
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


def arm_seed_tree(
    base: dict[str, Any], overrides: dict[str, Any], seed: int, vary_data_order: bool = True
) -> dict[str, Any]:
    """The config tree of one arm at one seed: base + arm overrides, trainer.seed = seed, controller seeds = seed
    unless the base or the arm sets them, and (with `vary_data_order`) task.seed = base task.seed + seed with the
    held-out problems pinned to the base's seed (task.eval_seed)."""
    tree = deep_merge(base, overrides)
    set_dotted(tree, "trainer.seed", seed)
    for key in controller_seed_keys():
        if not has_dotted(tree, key):
            set_dotted(tree, key, seed)
    if vary_data_order:
        task = tree.get("task") if isinstance(tree.get("task"), dict) else {}
        task_seed = task.get("seed", DEFAULT_TASK_SEED)
        if not isinstance(task_seed, int) or isinstance(task_seed, bool):
            raise ConfigError(f"task.seed={task_seed!r} must be an integer (seed s of a comparison adds s to it).")
        if task.get("eval_seed") is None:
            set_dotted(tree, "task.eval_seed", task_seed)
        set_dotted(tree, "task.seed", task_seed + seed)
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
    flags = {key: tree.get(key, default) for key, default in _FLAGS.items()}
    for key, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false.")
    seeds = _seeds(tree.get("seeds", [0]), "seeds")
    evaluation = parse_evaluation(tree.get("evaluation") or {})
    arms = _arms(tree.get("arms"), base, flags["allow_non_controller_overrides"], seeds)
    selection = _selection(tree.get("selection"), arms, seeds)
    if not (flags["allow_unequal_budgets"] or flags["allow_non_controller_overrides"]):
        check_equal_budgets(base, arms, seeds[0])  # arms that change trainer.steps on purpose change the budget
    return Comparison(
        name=str(tree.get("name") or default_name),
        description=str(tree.get("description") or ""),
        base=base,
        arms=arms,
        seeds=seeds,
        evaluation=evaluation,
        selection=selection,
        **flags,
    )


_FLAGS = {"vary_data_order": True, "allow_non_controller_overrides": False, "allow_unequal_budgets": False}


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


def _seeds(raw: Any, key: str) -> list[int]:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(s, int) and not isinstance(s, bool) for s in raw):
        raise ConfigError(f"{key}={raw!r} must be a non-empty list of integers, e.g. {key}: [0, 1, 2].")
    if len(set(raw)) != len(raw):
        raise ConfigError(f"{key}={raw} lists a seed twice; list each seed once.")
    return list(raw)


def parse_evaluation(raw: dict[str, Any]) -> EvaluationSettings:
    """The recipe's `evaluation:` mapping, checked (and its older `primary_temperature` spelling read)."""
    raw = dict(raw)
    if "primary_temperature" in raw:  # the older spelling of a common-temperature primary endpoint
        legacy = raw.pop("primary_temperature")
        if "primary" in raw:
            raise ConfigError(
                f"evaluation sets both primary={raw['primary']!r} and primary_temperature={legacy!r} (its older "
                "spelling); keep only evaluation.primary."
            )
        raw["primary"] = GREEDY if legacy == 0 else f"T={legacy:g}" if isinstance(legacy, (int, float)) else legacy
    settings: EvaluationSettings = build_section(EvaluationSettings, raw, "evaluation.")
    if not settings.temperatures or any(t < 0 for t in settings.temperatures):
        raise ConfigError(
            f"evaluation.temperatures={settings.temperatures} must be a non-empty list of values >= 0 (0 = greedy)."
        )
    if len(set(settings.temperatures)) != len(settings.temperatures):
        raise ConfigError(f"evaluation.temperatures={settings.temperatures} lists a temperature twice.")
    endpoint = settings.endpoint  # an unknown endpoint fails here
    if endpoint.kind == "common" and endpoint.temperature not in settings.temperatures:
        raise ConfigError(
            f"evaluation.primary={settings.primary!r} is not one of evaluation.temperatures={settings.temperatures}; "
            "add it there or pick one of them."
        )
    if settings.wants_tuned and not settings.tuning_temperatures:
        raise ConfigError(
            f"evaluation.temperatures={settings.temperatures} has no temperature above 0 for the 'tuned' endpoint to "
            "choose among; add some, e.g. [0, 0.6, 0.8, 1.0, 1.2]."
        )
    checks = [
        (settings.validation_size >= 0, f"evaluation.validation_size={settings.validation_size} must be >= 0."),
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


def _selection(raw: Any, arms: list[Arm], seeds: list[int]) -> Selection | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"selection: must be a mapping like {{arm: fixed-best, temperatures: [0.8, 1.0, 1.2], seeds: [100, 101]}}, "
            f"got {raw!r}."
        )
    selection: Selection = build_section(Selection, raw, "selection.")
    names = {arm.name: arm for arm in arms}
    if selection.arm not in names:
        raise ConfigError(f"selection.arm={selection.arm!r} is not an arm of this recipe; choose one of {list(names)}.")
    if not is_baseline(names[selection.arm].controller):
        raise ConfigError(
            f"selection.arm={selection.arm!r} uses controller {names[selection.arm].controller!r}; selection chooses "
            "the temperature of a fixed-temperature arm (controller: {name: fixed})."
        )
    temperatures = selection.temperatures
    if not temperatures or any(t <= 0 for t in temperatures) or len(set(temperatures)) != len(temperatures):
        raise ConfigError(
            f"selection.temperatures={temperatures} must list distinct temperatures above 0, e.g. [0.8, 1.0, 1.2]."
        )
    selection.seeds = _seeds(selection.seeds, "selection.seeds")
    shared = sorted(set(selection.seeds) & set(seeds))
    if shared:
        raise ConfigError(
            f"selection.seeds share {shared} with seeds={seeds}: a run that chose the temperature would then also be "
            "the comparison's run of that seed, carrying its selection luck into the result (winner's curse). Use "
            "seeds disjoint from the comparison's, e.g. selection.seeds: [100, 101, 102]."
        )
    return selection


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
