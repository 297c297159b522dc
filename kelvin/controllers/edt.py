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

import torch
from torch import Tensor

from kelvin.config import EDTControllerConfig
from kelvin.controllers.base import TemperatureController, TokenContext, TokenTemperature
from kelvin.rl.logprobs import entropy_from_logits


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
        if not (0 < cfg.n < 1 and cfg.theta > 0):
            raise ValueError(f"controller.edt n={cfg.n}, theta={cfg.theta}: need 0 < n < 1 and theta > 0.")
        if not (cfg.t0 > 0 and 0 < cfg.min_temperature <= cfg.t0):
            raise ValueError(
                f"controller.edt t0={cfg.t0}, min_temperature={cfg.min_temperature}: need 0 < min_temperature <= t0."
            )
        self.config = cfg

    def token_temperature(self, ctx: TokenContext) -> TokenTemperature:
        c = self.config
        entropy = entropy_from_logits(ctx.logits)
        return TokenTemperature(edt_temperature(entropy, c.t0, c.n, c.theta, c.min_temperature))
