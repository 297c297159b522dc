"""The one interface every temperature controller implements (DESIGN section 4).

The sampler asks `token_temperature` for tau at every decoding position; the trainer calls `begin_step` before each
rollout batch and `update` after the policy update. Controllers never import the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from kelvin.rl.rollouts import Rollouts


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
    """Quantities a controller wants from the trainer's old-policy pass (no extra forward pass)."""

    virtual_temperatures: list[float] | None = None  # TAMPO: mean log-lik of sampled tokens at each T_k
    hidden_states: bool = False  # IntroLLM: last-layer hidden state at every completion position
    vocab_chunk: int = 8192


@dataclass
class Scores:
    """What the old-policy pass computed for the controller. Tensors are over the rollout batch rows."""

    old_logprobs: Tensor  # [B, L] at the recorded tau
    entropy_at_one: Tensor  # [B, L] entropy of softmax(z) (T = 1), the policy's own uncertainty
    virtual_loglik: Tensor | None = None  # [B, K] when requested
    hidden_states: Tensor | None = None  # [B, L, d] when requested (detached)


class TemperatureController:
    """Base class: a batch-level constant temperature. Subclasses override what they need."""

    name = "base"
    needs_hidden_state = False  # the sampler computes hidden states only when some controller needs them

    def begin_step(self, step: int) -> None:
        """Called once before each rollout batch."""

    def batch_temperature(self) -> float | None:
        """The single temperature of this step's batch, for controllers that have one (else None)."""
        return None

    def token_temperature(self, ctx: TokenContext) -> TokenTemperature:
        raise NotImplementedError

    def scoring_request(self) -> ScoringRequest:
        return ScoringRequest()

    def trains_policy(self, step: int) -> bool:
        """Whether the token policy is updated this step (IntroLLM's coordinate ascent can skip it)."""
        return True

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


def constant(value: float, ctx: TokenContext) -> TokenTemperature:
    return TokenTemperature(torch.full_like(ctx.previous_temperature, float(value)))
