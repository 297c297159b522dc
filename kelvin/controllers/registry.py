"""The one mapping from a controller's name to its class and its config section.

It feeds everything that lists controllers: the config's allowed `controller.name` values and its
`controller.<name>.*` sections (so `kelvin config --explain` documents them), `build_controller`, the demo, and
loading learned temperatures beside a saved model. Adding a controller is one file plus one `register_controller`
call (kelvin/controllers/__init__.py registers the built-in ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kelvin.config import ControllerSection, KelvinConfig, controller_section, install_controller_sections
from kelvin.controllers.base import ControllerSetup, TemperatureController


@dataclass(frozen=True)
class ControllerSpec:
    controller: type[TemperatureController]
    config: type[ControllerSection]


CONTROLLERS: dict[str, ControllerSpec] = {}


def register_controller(
    name: str, controller: type[TemperatureController], config: type[ControllerSection] = ControllerSection
) -> None:
    """Make `controller.name=<name>` choose `controller`, configured by the section `controller.<name>.*`."""
    if not name.isidentifier():
        raise ValueError(f"Controller name {name!r} must be a Python identifier (it names a config section).")
    CONTROLLERS[name] = ControllerSpec(controller, config)
    install_controller_sections({n: spec.config for n, spec in CONTROLLERS.items()})


def unregister_controller(name: str) -> None:
    """Remove a registered controller (tests that register their own clean up with this)."""
    CONTROLLERS.pop(name, None)
    install_controller_sections({n: spec.config for n, spec in CONTROLLERS.items()})


def build_controller(config: KelvinConfig, hidden_size: int | None = None) -> TemperatureController:
    """The controller named by `config.controller.name`, set up for `config.trainer.steps` steps.

    `hidden_size` is the policy's hidden width (needed by controllers with a head on the hidden state).
    """
    spec = CONTROLLERS[config.controller.name]  # the config only allows registered names
    setup = ControllerSetup(
        initial_temperature=config.sampling.temperature, total_steps=config.trainer.steps, hidden_size=hidden_size
    )
    return spec.controller.from_config(controller_section(config), setup)


def has_learned_temperature(name: str) -> bool:
    """Whether the controller called `name` learns a temperature that evaluation can sample with."""
    return CONTROLLERS[name].controller.learned_temperature


def is_baseline(name: str) -> bool:
    """Whether the controller called `name` is the baseline that comparisons measure the others against."""
    spec = CONTROLLERS.get(name)
    return spec is not None and spec.controller.baseline


def load_learned_controller(folder: str | Path, seed: int | None = None) -> TemperatureController | None:
    """The controller whose learned parts are saved beside the model in `folder`, or None when there are none."""
    for spec in CONTROLLERS.values():
        controller = spec.controller.load_pretrained(folder, seed=seed)
        if controller is not None:
            return controller
    return None


def at_temperature(temperature: float) -> TemperatureController:
    """A controller that samples every token at one fixed temperature (evaluation, generation)."""
    from kelvin.controllers.fixed import FixedController

    return FixedController(temperature)
