"""A constant temperature for every token of every step (the GRPO baseline)."""

from __future__ import annotations

from kelvin.controllers.base import TemperatureController, TokenContext, TokenTemperature, constant


class FixedController(TemperatureController):
    name = "fixed"

    def __init__(self, temperature: float) -> None:
        self.temperature = float(temperature)

    def batch_temperature(self) -> float:
        return self.temperature

    def token_temperature(self, ctx: TokenContext) -> TokenTemperature:
        return constant(self.temperature, ctx)

    def metrics(self) -> dict[str, float]:
        return {"temperature/chosen": self.temperature}
