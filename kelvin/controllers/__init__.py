"""Temperature controllers behind one interface (see base.py). `build_controller` maps a config to one."""

from __future__ import annotations

from kelvin.config import KelvinConfig
from kelvin.controllers.base import TemperatureController


def build_controller(config: KelvinConfig, hidden_size: int | None = None) -> TemperatureController:
    """The controller named by `config.controller.name`, set up for `config.trainer.steps` steps.

    `hidden_size` is the policy's hidden width (needed by controllers with a head on the hidden state).
    """
    c = config.controller
    steps = config.trainer.steps
    tau0 = config.sampling.temperature
    if c.name == "fixed":
        from kelvin.controllers.fixed import FixedController

        return FixedController(tau0)
    if c.name == "schedule":
        from kelvin.controllers.schedule import ScheduleController

        return ScheduleController(c.schedule, total_steps=steps)
    if c.name == "entropy_target":
        from kelvin.controllers.entropy_target import EntropyTargetController

        return EntropyTargetController(c.entropy_target, initial_temperature=tau0)
    if c.name == "ead":
        from kelvin.controllers.ead import EADController

        return EADController(c.ead)
    if c.name == "edt":
        from kelvin.controllers.edt import EDTController

        return EDTController(c.edt)
    if c.name == "tampo":
        from kelvin.controllers.tampo import TAMPOController

        return TAMPOController(c.tampo)
    if c.name == "introspective":
        from kelvin.controllers.introspective import IntrospectiveController

        if hidden_size is None:
            raise ValueError("controller.name=introspective needs the model's hidden size.")
        return IntrospectiveController(c.introspective, hidden_size=hidden_size)
    raise ValueError(f"controller.name={c.name!r} is unknown.")
