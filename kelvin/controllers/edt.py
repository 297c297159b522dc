"""EDT, Entropy-based Dynamic Temperature: per-token temperature from the entropy of the next-token distribution.

Zhang, Bao and Huang, "EDT: Improving Large Language Models' Generation by Entropy-based Dynamic Temperature
Sampling", arXiv 2403.14541 (research/papers.md section 3.5). At every decoding position:

    H_t = entropy of softmax(z_t)  (the raw logits, T = 1, in nats)
    T_t = max(T_0 * N^{theta / H_t}, T_min)

with N < 1 (0.8 in the paper), theta > 0 and T_0 the highest temperature. Confident positions (H -> 0) get T -> 0,
clipped at `min_temperature`; uncertain positions approach T_0. A decoding heuristic, not an RL method: as an RL
baseline the per-token T_t is recorded with its token and every log-probability uses it (DESIGN section 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kelvin.config import ConfigError, ControllerSection, SamplingConfig, doc
from kelvin.controllers.base import TemperatureController, TokenContext, TokenTemperature
from kelvin.rl.logprobs import entropy_from_logits


@dataclass
class EDTControllerConfig(ControllerSection):
    t0: float = doc(1.0, "EDT (arXiv 2403.14541): T_t = T0 * N^(theta / H_t); T0 is the highest temperature.")
    n: float = doc(0.8, "EDT: base N (<1) of the exponent.")
    theta: float = doc(0.2, "EDT: scale theta > 0; larger theta cools confident tokens harder.")
    min_temperature: float = doc(0.05, "EDT: floor on T_t (H_t -> 0 sends T_t -> 0).")

    def validate(self, sampling: SamplingConfig) -> None:
        if not (0 < self.n < 1 and self.theta > 0):
            raise ConfigError(f"controller.edt n={self.n}, theta={self.theta}: need 0 < n < 1 and theta > 0.")
        if not (self.t0 > 0 and 0 < self.min_temperature <= self.t0):
            raise ConfigError(
                f"controller.edt t0={self.t0}, min_temperature={self.min_temperature}: need 0 < min_temperature <= t0."
            )


def edt_temperature(entropy: Tensor, t0: float, n: float, theta: float, min_temperature: float) -> Tensor:
    """max(t0 * n ** (theta / H), min_temperature), elementwise; H = 0 gives min_temperature."""
    # H can come out as -0.0 or a hair below zero in float32: treat every H <= 0 as 0 (exponent +inf, n**inf = 0).
    entropy = entropy.float()
    exponent = torch.where(entropy > 0, theta / entropy, torch.full_like(entropy, float("inf")))
    return (t0 * torch.pow(torch.tensor(n, dtype=torch.float32, device=entropy.device), exponent)).clamp_min(
        min_temperature
    )


class EDTController(TemperatureController):
    name = "edt"

    def __init__(self, cfg: EDTControllerConfig) -> None:
        cfg.validate(SamplingConfig())
        self.config = cfg

    def token_temperature(self, ctx: TokenContext) -> TokenTemperature:
        c = self.config
        entropy = entropy_from_logits(ctx.logits)
        return TokenTemperature(edt_temperature(entropy, c.t0, c.n, c.theta, c.min_temperature))
