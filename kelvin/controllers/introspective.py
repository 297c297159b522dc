"""IntroLLM: a small head on the last hidden state picks the temperature of every token (DESIGN section 5.3).

Zhou et al., "Look Inward to Explore Outward" (arXiv 2602.13035); what is read and what is reconstructed is in
research/papers.md section 2. At every decoding position the head reads the last decoder layer's hidden state h_t
(detached) and outputs u = [u_c, u_alpha, u_beta]:

    c_t ~ Bernoulli(sigmoid(u_c))                          gate: 1 = resample the temperature, 0 = keep it
    z_t ~ Beta(softplus(u_alpha) + eps, softplus(u_beta) + eps)     drawn only where c_t = 1
    tau_t = tau_min + z_t (tau_max - tau_min)  if c_t = 1,  else tau_{t-1}     (tau_{-1} = tau0)
    log pi_phi = log P(c_t) + c_t log Beta(z_t)

The sampler records gate, beta_sample (z_t; 0 where the gate did not fire) and head_logprob (log pi_phi at sampling
time) per token in `Rollouts.actions`; tau_t itself is `Rollouts.temperature`.

Training is coordinate ascent. A theta step is an ordinary GRPO step on the token policy (`trains_policy` is True); the
head is untouched because h_t is detached and the head is not in the policy optimizer. A phi step skips the token
update (`trains_policy` is False) and `update` runs a clipped GRPO-style step on log pi_phi with the same per-sequence
advantages, on hidden states the trainer's old-policy pass returns (the backbone is frozen: those are detached).
Blocks of `theta_steps` then `phi_steps`, or `joint=True` for both every step. The phase is a counter of completed
`update` calls, kept in the state so a resumed run continues the same block.

The head is saved beside the model (`save_head` / `load_head`, safetensors + JSON), and
`IntrospectiveController.from_pretrained(folder)` rebuilds a controller for generation.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from kelvin.config import ConfigError, ControllerSection, SamplingConfig, doc
from kelvin.controllers.base import (
    ControllerSetup,
    Scores,
    ScoringRequest,
    TemperatureController,
    TokenContext,
    TokenTemperature,
)
from kelvin.rl.distributed import all_reduce, all_reduce_gradients, rank
from kelvin.rl.grpo import clipped_surrogate as grpo_surrogate
from kelvin.rl.rollouts import Rollouts


@dataclass
class IntrospectiveControllerConfig(ControllerSection):
    tau_min: float = doc(0.5, "IntroLLM (arXiv 2602.13035): lowest temperature the head can pick.")
    tau_max: float = doc(1.5, "IntroLLM: highest temperature the head can pick.")
    tau0: float = doc(1.0, "IntroLLM: temperature before the first resample (tau_0).")
    beta_eps: float = doc(1e-3, "IntroLLM: eps in Beta(softplus(u_a)+eps, softplus(u_b)+eps).")
    init_gate_prob: float = doc(0.05, "IntroLLM: initial gate probability sigma(u_c) of a fresh head.")
    init_concentration: float = doc(
        20.0, "IntroLLM: initial alpha+beta of the Beta; high = resampled temperatures close to tau0."
    )
    learning_rate: float = doc(1e-3, "IntroLLM: AdamW learning rate of the head (its own optimizer).")
    epsilon: float = doc(0.2, "IntroLLM: clip range of the head's ratio in the phi phase.")
    theta_steps: int = doc(1, "IntroLLM: coordinate ascent block of token-policy (theta) steps.")
    phi_steps: int = doc(1, "IntroLLM: coordinate ascent block of temperature-head (phi) steps.")
    joint: bool = doc(
        False, "IntroLLM: update theta and phi on every step from the same batch instead of alternating blocks."
    )
    phi_iterations: int = doc(
        1,
        "IntroLLM: optimizer passes of the head over each phi-step batch (PPO epochs). With 1 the head ratio is 1 "
        "and the clip never binds; more passes reuse the batch and let `epsilon` matter.",
    )
    seed: int = doc(0, "IntroLLM: seed of the head's initialisation and of its gate / Beta sampling generator.")

    def validate(self, sampling: SamplingConfig) -> None:
        if not 0 < self.tau_min < self.tau_max:
            raise ConfigError(
                f"controller.introspective tau_min={self.tau_min}, tau_max={self.tau_max}: need 0 < tau_min < tau_max."
            )
        if not self.tau_min <= self.tau0 <= self.tau_max:
            raise ConfigError(
                f"controller.introspective.tau0={self.tau0} must lie in [tau_min, tau_max] = "
                f"[{self.tau_min}, {self.tau_max}]."
            )
        if not 0 < self.init_gate_prob < 1:
            raise ConfigError(
                f"controller.introspective.init_gate_prob={self.init_gate_prob} must be in (0, 1); e.g. 0.05."
            )
        if not (self.init_concentration > 0 and self.beta_eps > 0):
            raise ConfigError(
                f"controller.introspective init_concentration={self.init_concentration}, beta_eps={self.beta_eps}: "
                "both must be > 0 (e.g. 20 and 1e-3)."
            )
        if not self.learning_rate > 0:
            raise ConfigError(f"controller.introspective.learning_rate={self.learning_rate} must be > 0; e.g. 1e-3.")
        if not 0 <= self.epsilon < 1:
            raise ConfigError(f"controller.introspective.epsilon={self.epsilon} must be in [0, 1); e.g. 0.2.")
        if not (self.theta_steps >= 0 and self.phi_steps >= 0 and self.theta_steps + self.phi_steps >= 1):
            raise ConfigError(
                f"controller.introspective theta_steps={self.theta_steps}, phi_steps={self.phi_steps}: both must be "
                ">= 0 with at least one step per cycle (phi_steps=0 never trains the head; theta_steps=0 freezes the "
                "model)."
            )
        if self.phi_iterations < 1:
            raise ConfigError(f"controller.introspective.phi_iterations={self.phi_iterations} must be >= 1.")


HEAD_WEIGHTS_FILE = "temperature_head.safetensors"
HEAD_CONFIG_FILE = "temperature_head.json"
HEAD_FORMAT = "kelvin.temperature_head"
HEAD_FORMAT_VERSION = 1

# Std of W2's entries times sqrt(fan_in): small, so that a fresh head's output is its bias whatever h_t is, yet
# non-zero so that W1 receives gradients from the first phi step on.
INIT_OUTPUT_SCALE = 0.01
# Rows of a phi-step batch processed together: bounds the head's activations at (tokens x d/2) floats.
PHI_TOKENS_PER_CHUNK = 16384
Phase = Literal["theta", "phi", "joint"]
PHASE_CODE: dict[str, float] = {"theta": 0.0, "phi": 1.0, "joint": 2.0}


# --------------------------------------------------------------------------------------------------------------------
# The math: small pure functions
# --------------------------------------------------------------------------------------------------------------------


def beta_parameters(head_out: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(alpha, beta) = (softplus(u_alpha) + eps, softplus(u_beta) + eps) from head outputs [..., 3]."""
    return F.softplus(head_out[..., 1]) + eps, F.softplus(head_out[..., 2]) + eps


def beta_log_prob(z: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
    """log of the Beta(alpha, beta) density at z in (0, 1)."""
    log_norm = torch.lgamma(alpha + beta) - torch.lgamma(alpha) - torch.lgamma(beta)
    return (alpha - 1) * torch.log(z) + (beta - 1) * torch.log1p(-z) + log_norm


def gate_log_prob(gate_logit: Tensor, gate: Tensor) -> Tensor:
    """log P(c) for c ~ Bernoulli(sigmoid(gate_logit)), computed stably with logsigmoid."""
    return torch.where(gate > 0.5, F.logsigmoid(gate_logit), F.logsigmoid(-gate_logit))


def action_log_prob(head_out: Tensor, gate: Tensor, z: Tensor, eps: float) -> Tensor:
    """log pi_phi(c, z) = log P(c) + c * log Beta(z; softplus(u_alpha)+eps, softplus(u_beta)+eps).

    head_out [..., 3]; gate and z [...]. Where c = 0 the Beta term is exactly 0 whatever z holds (the sampler stores
    0 there, and 0 in padding), and no NaN reaches the gradient from it.
    """
    fired = gate > 0.5
    alpha, beta = beta_parameters(head_out, eps)
    safe_z = torch.where(fired, z, torch.full_like(z, 0.5))
    beta_term = torch.where(fired, beta_log_prob(safe_z, alpha, beta), torch.zeros_like(alpha))
    return gate_log_prob(head_out[..., 0], gate) + beta_term


def temperature_from_sample(z: Tensor, tau_min: float, tau_max: float) -> Tensor:
    return tau_min + z * (tau_max - tau_min)


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y > 0 (x = y for large y, where softplus is the identity to float precision)."""
    return y if y > 30.0 else math.log(math.expm1(y))


def initial_output_bias(cfg: IntrospectiveControllerConfig) -> Tensor:
    """b2 such that sigmoid(u_c) = init_gate_prob and the Beta has mean at tau0 and alpha+beta = init_concentration.

    The Beta mean (tau0 - tau_min) / (tau_max - tau_min) is kept inside [0.01, 0.99] so that tau0 at an end of the
    range still gives a proper Beta.
    """
    mean = (cfg.tau0 - cfg.tau_min) / (cfg.tau_max - cfg.tau_min)
    mean = min(max(mean, 0.01), 0.99)
    alpha = max(mean * cfg.init_concentration - cfg.beta_eps, 1e-4)
    beta = max((1 - mean) * cfg.init_concentration - cfg.beta_eps, 1e-4)
    gate_logit = math.log(cfg.init_gate_prob / (1 - cfg.init_gate_prob))
    return torch.tensor([gate_logit, inverse_softplus(alpha), inverse_softplus(beta)], dtype=torch.float32)


def sample_action(head_out: Tensor, eps: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Draw (gate, z) per row from head outputs [B, 3]; z is 0 where the gate did not fire.

    z is drawn for every row (so the generator advances the same way whatever the gates are), in float64 through the
    Dirichlet sampler (Beta(a, b) = first coordinate of Dirichlet(a, b)), then clamped into the open interval so its
    log-density is finite.
    """
    gate = torch.bernoulli(torch.sigmoid(head_out[..., 0]), generator=generator)
    alpha, beta = beta_parameters(head_out, eps)
    draws = torch._sample_dirichlet(torch.stack([alpha, beta], dim=-1).double(), generator=generator)[..., 0]
    tiny = torch.finfo(head_out.dtype).eps
    z = torch.nan_to_num(draws.to(head_out.dtype), nan=0.5).clamp(tiny, 1 - tiny)
    return gate, torch.where(gate > 0.5, z, torch.zeros_like(z))


def pearson_correlation(x: Tensor, y: Tensor) -> float:
    """Pearson correlation of two 1-D samples; 0.0 when either is constant (the correlation is undefined)."""
    x, y = x.double(), y.double()
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float((dx * dx).sum()) * float((dy * dy).sum()))
    return float((dx * dy).sum()) / denominator if denominator > 0 else 0.0


def temperature_statistics(
    temperature: Tensor, mask: Tensor, gate: Tensor | None, entropy: Tensor | None
) -> dict[str, float]:
    """Per-token temperature metrics over completion tokens (mask [B, L] > 0)."""
    keep = mask > 0
    taus = temperature[keep].double().cpu()
    if taus.numel() == 0:
        return {}
    q10, q50, q90 = np.quantile(taus.numpy(), [0.1, 0.5, 0.9])
    stats = {
        "temperature/token_mean": float(taus.mean()),
        "temperature/token_std": float(taus.std(unbiased=False)),
        "temperature/q10": float(q10),
        "temperature/q50": float(q50),
        "temperature/q90": float(q90),
    }
    if gate is not None:
        stats["temperature/gate_rate"] = float(gate[keep].double().mean())
    if entropy is not None:
        stats["temperature/entropy_corr"] = pearson_correlation(taus, entropy[keep].cpu())
    return stats


def clipped_surrogate(ratio: Tensor, advantages: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """Per-token loss -min(rho A, clip(rho, 1-eps, 1+eps) A) and where the clip binds (TRL's low/high regions)."""
    loss = grpo_surrogate(ratio, advantages, epsilon, epsilon)
    binds = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + epsilon) & (advantages > 0))
    return loss, binds


# --------------------------------------------------------------------------------------------------------------------
# The head
# --------------------------------------------------------------------------------------------------------------------


class TemperatureHead(nn.Module):
    """u = W2 ReLU(W1 h + b1) + b2 with W1: d -> d/2, W2: d/2 -> 3; outputs [u_c, u_alpha, u_beta] in float32.

    It carries the controller config it was built with (tau range, eps, init) so that a saved head is self-describing.
    The input is detached: no gradient ever flows from the head into the backbone.
    """

    def __init__(self, hidden_size: int, config: IntrospectiveControllerConfig | None = None) -> None:
        super().__init__()
        if hidden_size < 2:
            raise ValueError(f"TemperatureHead hidden_size={hidden_size} must be >= 2 (the model's hidden width).")
        self.hidden_size = int(hidden_size)
        self.config = config if config is not None else IntrospectiveControllerConfig()
        with torch.random.fork_rng(devices=[]):  # nn.Linear's own init must not move the global RNG
            self.fc1 = nn.Linear(self.hidden_size, self.hidden_size // 2)
            self.fc2 = nn.Linear(self.hidden_size // 2, 3)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Seeded init: W1, b1 as nn.Linear's default; W2 small; b2 from `initial_output_bias`."""
        generator = torch.Generator().manual_seed(self.config.seed)
        bound = 1.0 / math.sqrt(self.hidden_size)
        self.fc1.weight.uniform_(-bound, bound, generator=generator)
        self.fc1.bias.uniform_(-bound, bound, generator=generator)
        self.fc2.weight.normal_(0.0, INIT_OUTPUT_SCALE / math.sqrt(self.fc2.in_features), generator=generator)
        self.fc2.bias.copy_(initial_output_bias(self.config))

    def forward(self, hidden: Tensor) -> Tensor:
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(
                f"TemperatureHead was built for hidden size {self.hidden_size} but got hidden states of width "
                f"{hidden.shape[-1]}; load the head saved with this model."
            )
        h = hidden.detach().to(self.fc1.weight.dtype)
        return self.fc2(torch.relu(self.fc1(h))).float()


# --------------------------------------------------------------------------------------------------------------------
# The controller
# --------------------------------------------------------------------------------------------------------------------


class IntrospectiveController(TemperatureController):
    """Per-token temperatures from a learned head, trained by coordinate ascent with the token policy."""

    name = "introspective"
    needs_hidden_state = True
    learned_temperature = True

    @classmethod
    def from_config(cls, section: ControllerSection, setup: ControllerSetup) -> IntrospectiveController:
        assert isinstance(section, IntrospectiveControllerConfig)
        if setup.hidden_size is None:
            raise ValueError("controller.name=introspective needs the model's hidden size.")
        return cls(section, hidden_size=setup.hidden_size)

    def __init__(self, cfg: IntrospectiveControllerConfig, hidden_size: int) -> None:
        cfg.validate(SamplingConfig())
        self.cfg = cfg
        self.head = TemperatureHead(hidden_size, cfg)
        # No weight decay: it would pull b2 away from the initialisation that makes a fresh head sample at tau0.
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
        self.completed_steps = 0  # update() calls so far: positions the alternation
        self._generator: torch.Generator | None = None
        self._pending_generator_state: dict[str, Any] | None = None
        self._last_metrics: dict[str, float] = {}

    # ---- construction for inference ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder: str | Path, seed: int | None = None) -> IntrospectiveController:
        """A controller around the head saved in a model folder (for generation); `seed` overrides the saved one."""
        head = load_head(folder)
        if head is None:
            raise FileNotFoundError(
                f"'{folder}' has no {HEAD_WEIGHTS_FILE}: it holds no temperature head. Generate with a fixed "
                "temperature instead, or point at a model saved by an IntroLLM run (controller.name=introspective)."
            )
        cfg = head.config if seed is None else dataclasses.replace(head.config, seed=seed)
        controller = cls(cfg, head.hidden_size)
        controller.head.load_state_dict(head.state_dict())
        return controller

    @classmethod
    def load_pretrained(cls, folder: str | Path, seed: int | None = None) -> IntrospectiveController | None:
        """The controller around the head saved beside a model, or None when the folder holds no head."""
        return cls.from_pretrained(folder, seed=seed) if has_head(folder) else None

    def save_pretrained(self, folder: str | Path) -> None:
        """Save the head beside a saved model (the trainer calls this when it writes the final model)."""
        save_head(self.head, folder)

    def temperature_range(self) -> tuple[float, float]:
        return (self.cfg.tau_min, self.cfg.tau_max)

    @property
    def initial_temperature(self) -> float:
        """tau_{-1}: the temperature before the first resample (the sampler's `initial_temperature`)."""
        return float(self.cfg.tau0)

    # ---- coordinate ascent --------------------------------------------------------------------------------------

    def phase(self) -> Phase:
        """The phase of the current step: theta (token policy), phi (head) or joint (both)."""
        if self.cfg.joint:
            return "joint"
        cycle = self.cfg.theta_steps + self.cfg.phi_steps
        return "theta" if self.completed_steps % cycle < self.cfg.theta_steps else "phi"

    def trains_policy(self, step: int) -> bool:
        return self.phase() != "phi"

    def trains_head(self) -> bool:
        return self.phase() != "theta"

    def scoring_request(self) -> ScoringRequest:
        """Hidden states only on steps that train the head (they cost B x L x d); ask again every step."""
        return ScoringRequest(hidden_states=self.trains_head())

    # ---- sampling -----------------------------------------------------------------------------------------------

    def begin_step(self, step: int) -> None:
        """Reseed the gate / Beta generator from (seed, process rank, step).

        A resumed run therefore draws the same temperatures at the same step, sampling done between steps (evaluation)
        does not shift training's draws, and data-parallel processes draw independently.
        """
        device = self.head.fc1.weight.device
        self._generator = torch.Generator(device=device).manual_seed(derived_seed(self.cfg.seed, rank(), step))
        self._pending_generator_state = None

    def _generator_on(self, device: torch.device) -> torch.Generator:
        if self._generator is not None and self._generator.device == device:
            return self._generator
        generator = torch.Generator(device=device)
        pending = self._pending_generator_state
        if pending is not None and torch.device(pending["device"]) == device:
            generator.set_state(pending["state"])
        else:
            if pending is not None or self._generator is not None:
                warnings.warn(
                    f"IntrospectiveController: the sampling generator moves to {device} within a step; it restarts "
                    "from its seed, so samples differ from a run that stayed on one device.",
                    stacklevel=3,
                )
            generator.manual_seed(derived_seed(self.cfg.seed, rank(), -1))
        self._generator, self._pending_generator_state = generator, None
        return generator

    @torch.no_grad()
    def token_temperature(self, ctx: TokenContext) -> TokenTemperature:
        if ctx.hidden is None:
            raise ValueError(
                "IntrospectiveController needs the last hidden state (TokenContext.hidden); the sampler computes it "
                "when controller.needs_hidden_state is True."
            )
        head_out = self.head(ctx.hidden)
        gate, z = sample_action(head_out, self.cfg.beta_eps, self._generator_on(head_out.device))
        if ctx.position == 0:  # tau_{-1} = tau0 whatever initial temperature the sampler was given
            previous = torch.full_like(gate, self.cfg.tau0)
        else:
            previous = ctx.previous_temperature.to(gate.device, torch.float32)
        resampled = temperature_from_sample(z, self.cfg.tau_min, self.cfg.tau_max)
        tau = torch.where(gate > 0.5, resampled, previous)
        logp = action_log_prob(head_out, gate, z, self.cfg.beta_eps)
        return TokenTemperature(tau, {"gate": gate, "beta_sample": z, "head_logprob": logp})

    # ---- learning -----------------------------------------------------------------------------------------------

    def update(self, rollouts: Rollouts, advantages: Tensor, scores: Scores) -> dict[str, float]:
        """Temperature metrics every step; on phi (or joint) steps also one head update. Advances the phase."""
        metrics = temperature_statistics(
            rollouts.temperature, rollouts.completion_mask, rollouts.actions.get("gate"), scores.entropy_at_one
        )
        phase = self.phase()
        metrics["introspective/phase"] = PHASE_CODE[phase]
        if phase != "theta":
            metrics.update(self._update_head(rollouts, advantages, scores))
        self.completed_steps += 1
        self._last_metrics = dict(metrics)
        return metrics

    def _update_head(self, rollouts: Rollouts, advantages: Tensor, scores: Scores) -> dict[str, float]:
        """Clipped GRPO-style step(s) on log pi_phi with the per-sequence advantages broadcast over tokens.

        Normaliser: token mean over the whole batch, sum_{b,t} m_bt l_bt / max(sum m, 1) (BNPO-style), so every
        temperature decision weighs the same whatever its sequence's length.
        """
        hidden = scores.hidden_states
        if hidden is None:
            raise ValueError(
                "IntrospectiveController.update on a phi step needs Scores.hidden_states; fill it from the old-policy "
                "pass whenever controller.scoring_request().hidden_states is True (ask every step)."
            )
        missing = [k for k in ("gate", "beta_sample", "head_logprob") if k not in rollouts.actions]
        if missing:
            raise ValueError(
                f"Rollouts.actions lacks {missing}: the batch was not sampled with the IntrospectiveController."
            )
        batch, length = rollouts.completion_ids.shape
        if tuple(hidden.shape[:2]) != (batch, length):
            raise ValueError(
                f"Scores.hidden_states has shape {tuple(hidden.shape)} but the completions are [{batch}, {length}]; "
                "give the last-layer hidden state at the position that produced each completion token."
            )
        device = self.head.fc1.weight.device
        mask = rollouts.completion_mask.to(device, torch.float32)
        n_tokens = all_reduce(mask.sum()).clamp(min=1.0)  # over all data-parallel processes
        adv = advantages.to(device, torch.float32).reshape(batch, 1).expand(batch, length)
        gate = rollouts.actions["gate"].to(device)
        z = rollouts.actions["beta_sample"].to(device)
        old = rollouts.actions["head_logprob"].to(device, torch.float32)
        rows_per_chunk = max(1, PHI_TOKENS_PER_CHUNK // max(length, 1))
        eps = self.cfg.beta_eps

        losses, clip_fractions, grad_norms = [], [], []
        initial_ratio_error = 0.0
        for iteration in range(self.cfg.phi_iterations):
            self.optimizer.zero_grad(set_to_none=True)
            totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss, clipped tokens
            for start in range(0, batch, rows_per_chunk):
                rows = slice(start, start + rows_per_chunk)
                new = action_log_prob(self.head(hidden[rows].to(device)), gate[rows], z[rows], eps)
                ratio = torch.exp(new - old[rows])
                token_loss, binds = clipped_surrogate(ratio, adv[rows], self.cfg.epsilon)
                chunk_loss = (token_loss * mask[rows]).sum() / n_tokens
                chunk_loss.backward()
                totals[0] += chunk_loss.detach().double()
                totals[1] += (binds.float() * mask[rows]).sum().double()
                if iteration == 0:
                    deviation = ((ratio.detach() - 1).abs() * mask[rows]).max()
                    initial_ratio_error = max(initial_ratio_error, float(deviation))
            all_reduce_gradients(self.head)
            grad_norm = torch.nn.utils.clip_grad_norm_(self.head.parameters(), 1.0)
            self.optimizer.step()
            total_loss, clipped = all_reduce(totals).tolist()
            losses.append(total_loss)
            clip_fractions.append(clipped / float(n_tokens))
            grad_norms.append(float(grad_norm))
        self.optimizer.zero_grad(set_to_none=True)
        return {
            "introspective/loss": float(np.mean(losses)),
            "introspective/clip_ratio": float(np.mean(clip_fractions)),
            "introspective/grad_norm": float(np.mean(grad_norms)),
            # The first pass must reproduce the sampler's log pi_phi: a large value means misaligned hidden states.
            "introspective/initial_ratio_max_error": float(
                all_reduce(torch.tensor(initial_ratio_error, device=device), maximum=True)
            ),
        }

    def metrics(self) -> dict[str, float]:
        return dict(self._last_metrics)

    # ---- state --------------------------------------------------------------------------------------------------

    def _generator_state(self) -> dict[str, Any] | None:
        if self._generator is None:
            return copy.deepcopy(self._pending_generator_state)
        return {"device": str(self._generator.device), "state": self._generator.get_state().clone()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "head": {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()},
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "generator": self._generator_state(),
            "completed_steps": self.completed_steps,
            "hidden_size": self.head.hidden_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["hidden_size"]) != self.head.hidden_size:
            raise ValueError(
                f"The checkpoint's temperature head has hidden size {state['hidden_size']} but this model's is "
                f"{self.head.hidden_size}; resume with the model the checkpoint was trained on."
            )
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self.completed_steps = int(state["completed_steps"])
        self._generator = None
        self._pending_generator_state = copy.deepcopy(state["generator"])

    def modules(self) -> list[nn.Module]:
        return [self.head]


def derived_seed(seed: int, rank: int, step: int) -> int:
    """A 63-bit seed for (seed, process rank, step), independent across its arguments."""
    digest = hashlib.sha256(f"kelvin.introspective:{seed}:{rank}:{step}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------------------------------
# Saving beside the model
# --------------------------------------------------------------------------------------------------------------------


def save_head(head: TemperatureHead, folder: str | Path) -> None:
    """Write temperature_head.safetensors and temperature_head.json (hidden size + controller config) in `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()}
    description = {
        "format": HEAD_FORMAT,
        "version": HEAD_FORMAT_VERSION,
        "hidden_size": head.hidden_size,
        "config": dataclasses.asdict(head.config),
    }
    weights_tmp, config_tmp = folder / (HEAD_WEIGHTS_FILE + ".tmp"), folder / (HEAD_CONFIG_FILE + ".tmp")
    save_file(tensors, str(weights_tmp), metadata={"format": HEAD_FORMAT})
    config_tmp.write_text(json.dumps(description, indent=2) + "\n")
    os.replace(weights_tmp, folder / HEAD_WEIGHTS_FILE)
    os.replace(config_tmp, folder / HEAD_CONFIG_FILE)


def has_head(folder: str | Path) -> bool:
    return (Path(folder) / HEAD_WEIGHTS_FILE).is_file()


def load_head(folder: str | Path) -> TemperatureHead | None:
    """The temperature head saved in `folder`, or None when the folder has none."""
    folder = Path(folder)
    if not has_head(folder):
        return None
    config_path = folder / HEAD_CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(
            f"'{folder}' has {HEAD_WEIGHTS_FILE} but no {HEAD_CONFIG_FILE}; save the head with save_head()."
        )
    description = json.loads(config_path.read_text())
    if description.get("format") != HEAD_FORMAT or int(description.get("version", 0)) > HEAD_FORMAT_VERSION:
        raise ValueError(
            f"{config_path} is not a Kelvin temperature head of version <= {HEAD_FORMAT_VERSION} "
            f"(format={description.get('format')!r}, version={description.get('version')!r})."
        )
    known = {f.name for f in dataclasses.fields(IntrospectiveControllerConfig)}
    config = IntrospectiveControllerConfig(**{k: v for k, v in description["config"].items() if k in known})
    head = TemperatureHead(int(description["hidden_size"]), config)
    head.load_state_dict(load_file(str(folder / HEAD_WEIGHTS_FILE)))
    return head
