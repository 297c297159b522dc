"""The rollout-engine seam: prompts + controller -> Rollouts, whoever does the sampling.

The trainer asks its engine for each step's rollouts and tells it after every optimizer step that the policy changed;
it never asks which engine it has. `KelvinEngine` (Kelvin's own KV-cache sampler, kelvin/rl/sampling.py) is the
first implementation and serves every controller: it asks `token_temperature` at every position.

The second engine, vLLM (kelvin/rl/vllm_engine.py, `sampling.engine=vllm`), takes one temperature per batch: it
serves controllers with `batch_level = True` (fixed, schedule, entropy_target, TAMPO) from
`controller.batch_temperature()` after `begin_step`, and refuses the others in `check_controller` (per-token
controllers such as IntroLLM need each token's hidden state, so they need Kelvin's engine). Whatever the engine, the
Rollouts it returns record tau for every token and the behaviour log-probs, so that everything downstream
(advantages, rescoring at the recorded tau, metrics) is unchanged.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from kelvin.config import KelvinConfig
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


class BatchSampler(Protocol):
    """An engine that samples a batch at one temperature with given settings (evaluation through vLLM)."""

    def sample(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        tau: float,
        generator: torch.Generator,
        settings: SamplingSettings | None = None,
    ) -> Rollouts: ...


class KelvinEngine:
    """Kelvin's sampler on the live policy: every controller, per-token temperatures included."""

    name = "kelvin"

    def __init__(self, policy: torch.nn.Module, settings: SamplingSettings, batch_size: int = 0) -> None:
        self.policy = policy
        self.settings = settings
        self.batch_size = batch_size  # sequences sampled together; 0 = the whole batch at once

    @staticmethod
    def check_controller(controller: TemperatureController) -> None:
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
    config: KelvinConfig,
    policy: torch.nn.Module,
    settings: SamplingSettings,
    controller: TemperatureController,
    seed: int = 0,
) -> RolloutEngine:
    """The run's rollout engine (`sampling.engine`), checked against its controller before it starts."""
    if config.sampling.engine == "kelvin":
        KelvinEngine.check_controller(controller)
        return KelvinEngine(policy, settings, config.sampling.batch_size)

    from kelvin.models.setup import resolve_model_path
    from kelvin.rl.vllm_engine import VLLMEngine, VLLMOptions

    VLLMEngine.check_controller(controller)  # before vLLM is imported or started: nothing is lost
    s, t = config.sampling, config.trainer
    length = s.vllm_max_model_length or s.max_prompt_length + s.max_completion_length
    options = VLLMOptions(
        model_folder=resolve_model_path(config, quiet=True),
        dtype=config.model.dtype,
        max_model_length=min(length, int(getattr(policy.config, "max_position_embeddings", length) or length)),
        gpu_memory_utilization=s.vllm_gpu_memory_utilization,
        tensor_parallel_size=s.vllm_tensor_parallel_size,
        enable_sleep_mode=s.vllm_enable_sleep_mode,
        seed=seed,
        kv_cache_tokens=(t.prompts_per_step * s.num_generations) * (s.max_prompt_length + s.max_completion_length),
    )
    return VLLMEngine(policy, settings, options)
