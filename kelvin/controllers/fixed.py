"""A constant temperature for every token of every step (the GRPO baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from kelvin.config import ControllerSection
from kelvin.controllers.base import ControllerSetup, TemperatureController, TokenContext, TokenTemperature, constant


@dataclass
class FixedControllerConfig(ControllerSection):
    """No fields: the temperature is `sampling.temperature`."""


class FixedController(TemperatureController):
    name = "fixed"
    batch_level = True
    baseline = True

    @classmethod
    def from_config(cls, section: ControllerSection, setup: ControllerSetup) -> FixedController:
        return cls(setup.initial_temperature)

    def __init__(self, temperature: float) -> None:
        self.temperature = float(temperature)

    def batch_temperature(self) -> float:
        return self.temperature

    def token_temperature(self, ctx: TokenContext) -> TokenTemperature:
        return constant(self.temperature, ctx)

    def metrics(self) -> dict[str, float]:
        return {"temperature/chosen": self.temperature}
