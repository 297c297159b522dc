"""The one interface every temperature controller implements (DESIGN section 4).

The loop calls hooks named by when they run and never asks which controller it has:

    from_config(section, setup)        once, when a run starts (the registry calls it)
    begin_step(step)                   before each rollout batch
    token_temperature(ctx)             at every decoding position (Kelvin's sampler)
    batch_temperature()                the batch's single tau, for engines that take one per batch (else None)
    score_micro_batch(logits, hidden, micro)
                                       in the old-policy pass, once per micro-batch (no extra forward pass)
    trains_policy(step)                whether the token policy is updated this step
    policy_update_steps(total)         how many of the run's steps update it (plans the lr schedule)
    update(rollouts, advantages, scores)
                                       after the policy update
    state_dict / load_state_dict       checkpoints
    save_pretrained / load_pretrained  learned parts beside a saved model (for `kelvin eval/generate`)

Controllers never import the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kelvin.config import ControllerSection
from kelvin.rl.rollouts import Rollouts


@dataclass
class ControllerSetup:
    """What a run tells a controller when it is built, besides the controller's own config section."""

    initial_temperature: float = 1.0  # sampling.temperature: the fixed tau, or the starting point
    total_steps: int = 1  # trainer.steps
    hidden_size: int | None = None  # the policy's hidden width (for heads on the hidden state)


@dataclass
class TokenContext:
    """What a controller may look at when choosing tau for the next token of every row."""

    step: int  # training step (0-based)
    position: int  # index of the token about to be sampled within the completion
    previous_temperature: Tensor  # [B] tau of the previous token (tau_0 at position 0)
    logits: Tensor  # [B, V] raw next-token logits (float32)
    hidden: Tensor | None  # [B, d] last decoder layer's hidden state, when the controller asked for it
    active: Tensor  # [B] bool, rows still generating


@dataclass
class TokenTemperature:
    """tau for the next token of every row, plus any actions to record into `Rollouts.actions`."""

    temperature: Tensor  # [B] float32, > 0
    actions: dict[str, Tensor] = field(default_factory=dict)  # each [B]


@dataclass
class ScoringRequest:
    """What the old-policy pass must compute beyond log-probs for the controller (no extra forward pass)."""

    hidden_states: bool = False  # the last-layer hidden state at every completion position


@dataclass
class Scores:
    """What the old-policy pass computed for the controller. Tensors are over the rollout batch rows."""

    old_logprobs: Tensor  # [B, L] at the recorded tau
    entropy_at_one: Tensor  # [B, L] entropy of softmax(z) (T = 1), the policy's own uncertainty
    hidden_states: Tensor | None = None  # [B, L, d] when requested (detached)
    rows: dict[str, Tensor] = field(default_factory=dict)  # [B, ...] each: `score_micro_batch`'s outputs


class TemperatureController:
    """Base class: what the loop needs from any controller. Subclasses override what they need."""

    name = "base"
    needs_hidden_state = False  # the sampler computes hidden states only when some controller needs them
    learned_temperature = False  # True: the temperature itself is learned and evaluation can sample with it
    baseline = False  # True: the comparison baseline (fixed temperature) that reports measure the others against
    batch_level = False  # True: one tau per batch (batch_temperature()), so engines that take one tau can serve it
    uses_total_steps = False  # True: its temperatures depend on trainer.steps (so --resume may not change it)

    @classmethod
    def from_config(cls, section: ControllerSection, setup: ControllerSetup) -> TemperatureController:
        """The controller of a run: its config section (`controller.<name>`) and the run's set-up."""
        return cls(section)  # type: ignore[call-arg]

    @property
    def initial_temperature(self) -> float | None:
        """tau before the first token (`TokenContext.previous_temperature` at position 0); None means
        sampling.temperature."""
        return None

    def begin_step(self, step: int) -> None:
        """Called once before each rollout batch."""

    def batch_temperature(self) -> float | None:
        """The single temperature of this step's batch, for controllers that have one (else None)."""
        return None

    def token_temperature(self, ctx: TokenContext) -> TokenTemperature:
        raise NotImplementedError

    def scoring_request(self) -> ScoringRequest:
        return ScoringRequest()

    def score_micro_batch(self, logits: Tensor, hidden: Tensor | None, micro: Rollouts) -> dict[str, Tensor]:
        """Per-row scores [b, ...] from one micro-batch of the old-policy pass, collected into `Scores.rows`.

        Called without grad on the detached logits [b, l, V] that predict each completion token of the (trimmed)
        micro-batch `micro`, and its hidden states [b, l, d] when `scoring_request().hidden_states`.
        """
        return {}

    def trains_policy(self, step: int) -> bool:
        """Whether the token policy is updated this step (IntroLLM's coordinate ascent can skip it)."""
        return True

    def policy_update_steps(self, total_steps: int) -> int:
        """How many of steps 0..total_steps-1 have `trains_policy` True: the trainer plans the learning-rate schedule
        over the policy updates actually taken, so a controller that skips some still ends at the schedule's end."""
        return total_steps

    def update(self, rollouts: Rollouts, advantages: Tensor, scores: Scores) -> dict[str, float]:
        """Learn from the batch after the policy update; returns metrics to log."""
        return {}

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def modules(self) -> list[torch.nn.Module]:
        """Trainable modules owned by the controller (moved to the model's device; saved beside the model)."""
        return []

    def temperature_range(self) -> tuple[float, float] | None:
        """The [lowest, highest] tau the controller can choose, when bounded (colour scales of rendered taus)."""
        return None

    def save_pretrained(self, folder: str | Path) -> None:
        """Save the learned parts beside a saved model (the trainer calls this when it writes the final model)."""

    @classmethod
    def load_pretrained(cls, folder: str | Path, seed: int | None = None) -> TemperatureController | None:
        """A controller rebuilt from the learned parts saved beside a model, or None when the folder has none."""
        return None


def constant(value: float, ctx: TokenContext) -> TokenTemperature:
    return TokenTemperature(torch.full_like(ctx.previous_temperature, float(value)))
