"""Temperature controllers behind one interface (base.py), listed once in the registry (registry.py).

Importing this package registers the built-in controllers; `kelvin/__init__.py` imports it, so the config knows
their names and sections before any recipe is read.
"""

from __future__ import annotations

from kelvin.controllers.base import TemperatureController
from kelvin.controllers.ead import EADController, EADControllerConfig
from kelvin.controllers.edt import EDTController, EDTControllerConfig
from kelvin.controllers.entropy_target import EntropyTargetController, EntropyTargetControllerConfig
from kelvin.controllers.fixed import FixedController, FixedControllerConfig
from kelvin.controllers.introspective import IntrospectiveController, IntrospectiveControllerConfig
from kelvin.controllers.registry import (
    CONTROLLERS,
    at_temperature,
    build_controller,
    has_learned_temperature,
    is_baseline,
    load_learned_controller,
    register_controller,
    unregister_controller,
)
from kelvin.controllers.schedule import ScheduleController, ScheduleControllerConfig
from kelvin.controllers.tampo import TAMPOController, TAMPOControllerConfig

# The order is the order of `controller.name`'s choices and of the config's sections; the first is the default.
register_controller("fixed", FixedController, FixedControllerConfig)
register_controller("schedule", ScheduleController, ScheduleControllerConfig)
register_controller("entropy_target", EntropyTargetController, EntropyTargetControllerConfig)
register_controller("ead", EADController, EADControllerConfig)
register_controller("edt", EDTController, EDTControllerConfig)
register_controller("tampo", TAMPOController, TAMPOControllerConfig)
register_controller("introspective", IntrospectiveController, IntrospectiveControllerConfig)

__all__ = [
    "CONTROLLERS",
    "TemperatureController",
    "at_temperature",
    "build_controller",
    "has_learned_temperature",
    "is_baseline",
    "load_learned_controller",
    "register_controller",
    "unregister_controller",
]
