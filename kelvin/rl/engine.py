"""The rollout-engine seam: prompts + controller -> Rollouts, whoever does the sampling.

The trainer asks its engine for each step's rollouts and tells it after every optimizer step that the policy changed;
it never asks which engine it has. `KelvinEngine` (Kelvin's own KV-cache sampler, kelvin/rl/sampling.py) is the
first implementation and serves every controller: it asks `token_temperature` at every position.

A second engine (vLLM, issue 9) plugs in by implementing `RolloutEngine` and being chosen in `build_engine`. Such an
engine takes one temperature per batch: it can serve controllers with `batch_level = True` (fixed, schedule,
entropy_target, TAMPO) from `controller.batch_temperature()` after `begin_step`, and must refuse the others in
`check_controller` (per-token controllers such as IntroLLM need each token's hidden state, so they need Kelvin's
engine). Whatever the engine, the Rollouts it returns must record tau for every token and the behaviour log-probs,
so that everything downstream (advantages, rescoring at the recorded tau, metrics) is unchanged.

The config field that chooses the engine (`sampling.engine`) is left to issue 9: with one engine there is nothing to
choose, and adding the field now would change every run's config.yaml.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from kelvin.controllers.base import TemperatureController
from kelvin.rl.rollouts import Rollouts
from kelvin.rl.sampling import SamplingSettings, sample_in_chunks


class RolloutEngine(Protocol):
    """Samples one completion per prompt row with the controller's temperatures."""

    name: str

    def check_controller(self, controller: TemperatureController) -> None:
        """Raise a ValueError naming the controller and the fix when this engine cannot serve it."""
        ...

    def generate(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        controller: TemperatureController,
        step: int,
        generator: torch.Generator,
        initial_temperature: float,
    ) -> Rollouts:
        """One completion per row of the left-padded prompt batch, tau and behaviour log-probs recorded per token."""
        ...

    def policy_updated(self) -> None:
        """Called after every optimizer step: an engine holding its own copy of the weights reloads them here."""
        ...


class KelvinEngine:
    """Kelvin's sampler on the live policy: every controller, per-token temperatures included."""

    name = "kelvin"

    def __init__(self, policy: torch.nn.Module, settings: SamplingSettings, batch_size: int = 0) -> None:
        self.policy = policy
        self.settings = settings
        self.batch_size = batch_size  # sequences sampled together; 0 = the whole batch at once

    def check_controller(self, controller: TemperatureController) -> None:
        """Kelvin's sampler serves every controller."""

    def generate(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        controller: TemperatureController,
        step: int,
        generator: torch.Generator,
        initial_temperature: float,
    ) -> Rollouts:
        return sample_in_chunks(
            self.policy,
            prompt_ids,
            prompt_mask,
            controller,
            self.settings,
            self.batch_size,
            step=step,
            generator=generator,
            initial_temperature=initial_temperature,
        )

    def policy_updated(self) -> None:
        """Nothing to do: the sampler runs on the policy being trained."""


def build_engine(
    policy: torch.nn.Module, settings: SamplingSettings, batch_size: int, controller: TemperatureController
) -> RolloutEngine:
    """The run's rollout engine (Kelvin's sampler; issue 9 adds the choice of vLLM), checked against its controller."""
    engine = KelvinEngine(policy, settings, batch_size)
    engine.check_controller(controller)
    return engine
