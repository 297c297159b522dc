"""Entropy-targeted batch temperature: a feedback controller that holds the policy's entropy at a target.

Constructed baseline, not from a paper (research/papers.md section 3.6): the analogue of SAC's automatic entropy
tuning and of Skywork-OR1's adaptive entropy control (arXiv 2505.22312), acting on the rollout temperature. Once per
step, after the batch:

    T_{s+1} = clip( T_s * exp( eta * (H* - H_s) ), T_min, T_max )

H_s is the mean token entropy of step s's rollouts measured at T = 1 (`Scores.entropy_at_one`, the policy's own
uncertainty, not the sampler's), averaged over every completion token of the batch (`completion_mask`). H* is
`target`, or, when `target` is 0, the first update's H times `target_ratio`. Entropy below target heats the sampler
up, entropy above target cools it down; multiplicative steps keep T > 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kelvin.config import ConfigError, ControllerSection, SamplingConfig, doc
from kelvin.controllers.base import (
    ControllerSetup,
    Scores,
    TemperatureController,
    TokenContext,
    TokenTemperature,
    constant,
)
from kelvin.rl.distributed import all_reduce
from kelvin.rl.rollouts import Rollouts


@dataclass
class EntropyTargetControllerConfig(ControllerSection):
    target: float = doc(
        0.0,
        "Target mean token entropy H* (nats, measured at T=1). 0 means: the entropy of the first batch "
        "times `target_ratio`.",
    )
    target_ratio: float = doc(1.0, "H* = ratio x first-step entropy when `target` is 0.")
    gain: float = doc(0.5, "eta in T <- clip(T * exp(eta * (H* - H)), T_min, T_max).")
    min_temperature: float = doc(0.5, "Lower clip of the controlled temperature.")
    max_temperature: float = doc(2.0, "Upper clip of the controlled temperature.")

    def validate(self, sampling: SamplingConfig) -> None:
        if not 0 < self.min_temperature <= self.max_temperature:
            raise ConfigError(
                f"controller.entropy_target min_temperature={self.min_temperature}, max_temperature="
                f"{self.max_temperature}: need 0 < min <= max."
            )
        if not self.min_temperature <= sampling.temperature <= self.max_temperature:
            raise ConfigError(
                f"sampling.temperature={sampling.temperature} is the entropy controller's starting point and must "
                f"lie in [controller.entropy_target.min_temperature, max_temperature] = "
                f"[{self.min_temperature}, {self.max_temperature}]; change one of them."
            )
        if self.target < 0 or (self.target == 0 and not self.target_ratio > 0):
            raise ConfigError(
                f"controller.entropy_target target={self.target}, target_ratio={self.target_ratio}: give target > 0 "
                "(nats) or target = 0 with target_ratio > 0."
            )
        if self.gain < 0:
            raise ConfigError(f"controller.entropy_target.gain={self.gain} must be >= 0 (e.g. 0.5).")


def mean_token_entropy(entropy: Tensor, mask: Tensor) -> float:
    """Mean of `entropy` over positions where `mask` is nonzero (all rows pooled); error when there are none."""
    counted = mask.bool()
    totals = all_reduce(torch.stack([entropy.double()[counted].sum(), counted.sum().double()]))  # all processes
    if float(totals[1]) == 0:
        raise ValueError("The rollout batch has no completion tokens (completion_mask is all zero); cannot measure H.")
    return float(totals[0] / totals[1])


def entropy_feedback(temperature: float, target: float, entropy: float, gain: float, low: float, high: float) -> float:
    """clip(T * exp(gain * (target - entropy)), low, high)."""
    return min(max(temperature * math.exp(gain * (target - entropy)), low), high)


class EntropyTargetController(TemperatureController):
    name = "entropy_target"
    batch_level = True

    @classmethod
    def from_config(cls, section: ControllerSection, setup: ControllerSetup) -> EntropyTargetController:
        assert isinstance(section, EntropyTargetControllerConfig)
        return cls(section, initial_temperature=setup.initial_temperature)

    def __init__(self, cfg: EntropyTargetControllerConfig, initial_temperature: float) -> None:
        cfg.validate(SamplingConfig(temperature=initial_temperature))
        self.config = cfg
        self.temperature = float(initial_temperature)  # this step's T
        self.next_temperature = float(initial_temperature)  # set by update(), taken up by the next begin_step()
        self.target: float | None = cfg.target if cfg.target > 0 else None
        self.last_entropy: float | None = None
        self.step = 0

    def begin_step(self, step: int) -> None:
        self.step = step
        self.temperature = self.next_temperature

    def batch_temperature(self) -> float:
        return self.temperature

    def token_temperature(self, ctx: TokenContext) -> TokenTemperature:
        return constant(self.temperature, ctx)

    def update(self, rollouts: Rollouts, advantages: Tensor, scores: Scores) -> dict[str, float]:
        """Measure H at T = 1 on this batch and set the next step's temperature (used from the next begin_step)."""
        entropy = mean_token_entropy(scores.entropy_at_one, rollouts.completion_mask)
        if self.target is None:
            self.target = entropy * self.config.target_ratio
        c = self.config
        self.next_temperature = entropy_feedback(
            self.temperature, self.target, entropy, c.gain, c.min_temperature, c.max_temperature
        )
        self.last_entropy = entropy
        return self.metrics()

    def metrics(self) -> dict[str, float]:
        """This step's T, the next step's T, and the entropy measurement and target once there is one."""
        out = {"temperature/chosen": self.temperature, "temperature/next": self.next_temperature}
        if self.last_entropy is not None:
            out["temperature/entropy_at_one"] = self.last_entropy
        if self.target is not None:
            out["temperature/entropy_target"] = self.target
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "next_temperature": self.next_temperature,
            "target": self.target,
            "last_entropy": self.last_entropy,
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.temperature = float(state["temperature"])
        self.next_temperature = float(state["next_temperature"])
        self.target = None if state["target"] is None else float(state["target"])
        self.last_entropy = None if state["last_entropy"] is None else float(state["last_entropy"])
        self.step = int(state["step"])
