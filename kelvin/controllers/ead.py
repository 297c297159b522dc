"""EAD, Exploratory Annealed Decoding: temperature annealed along the sequence, hot first, cold later.

Yang et al., "Let It Calm: Exploratory Annealed Decoding for Verifiable Reinforcement Learning", arXiv 2510.05251
(research/papers.md section 3.4). For the token at completion position t (0-based: the number of tokens generated
before it) at training step s:

    d_s   = min(d_0 + growth * s, d_max)                  later steps anneal more slowly
    tau_t = max(1 + tau_max - e^{t / d_s}, tau_min)       tau_0 = tau_max, falling towards tau_min
    tau_t = 1                                             for t < c (`warm_tokens`, the template tokens)

The position counts from the start of the completion, warm tokens included, as in the authors' code
(yangalan123/EAD-RLVR, annealed_sampling.py, decay_mode "negexp"). That code writes the exponent as t / (20 f) with
f = min(f_0 + 5 s, 40000); the same schedule here is d_0 = 20 f_0, growth = 100, d_max = 800000 (their script uses
f_0 = 25, tau_max = 1.2, tau_min = 0.1, c = 10). The defaults (d_0 = 40, growth 5) anneal within Kelvin's short
arithmetic completions.

The temperature changes inside a sequence; the sampler records it per token and every log-probability uses the
recorded value, so the importance ratio is exact and needs no truncated importance sampling.

What is optimised differs from the authors' code. Kelvin optimises the *tempered* policy: the loss, the old and the
reference log-probabilities all use log_softmax(z / tau_t) at the recorded tau_t (DESIGN section 1). The authors
(yangalan123/EAD-RLVR) train the policy at T = 1: the annealed sampler only chooses the tokens and the loss uses
log_softmax(z). Their code offers truncated importance sampling for sampling at tau_t != 1 (`actor.imp_ratio_cap`), but
its default is -1 (off) and their training script (recipe/ead/run_annealed_sampling.sh) does not set it, so their runs
train on the mismatched ratio. An exact copy of that variant needs a per-token "loss temperature" separate from the
recorded one; Kelvin does not offer it, so an EAD arm here measures EAD's sampling schedule under Kelvin's objective,
not the authors' exact method.

Long completions need the authors' constants, not these defaults: with d_0 = 40, growth 5, tau reaches 0.1 at token
30 at step 0; with d_0 = 500, growth 100, d_max = 800000 (their f_0 = 25) it does at token 371, and at token 15,136 at
step 199 (tau = tau_min once e^{t/d} >= 1 + tau_max - tau_min, i.e. t >= d ln 2.1). recipes/papers/introllm-math.yaml
uses the authors' constants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from kelvin.config import ConfigError, ControllerSection, SamplingConfig, doc
from kelvin.controllers.base import TemperatureController, TokenContext, TokenTemperature


@dataclass
class EADControllerConfig(ControllerSection):
    tau_max: float = doc(1.2, "EAD (arXiv 2510.05251): tau_t = max(1 + tau_max - e^{t/d}, tau_min).")
    tau_min: float = doc(0.1, "EAD: lowest temperature reached late in a sequence.")
    d0: float = doc(40.0, "EAD: initial decay length d_0 (tokens).")
    d_growth: float = doc(5.0, "EAD: d_s = min(d_0 + growth * step, d_max): later steps anneal more slowly.")
    d_max: float = doc(40000.0, "EAD: cap on d_s.")
    warm_tokens: int = doc(0, "EAD: the first c generated tokens are sampled at T=1 (template tokens).")

    def validate(self, sampling: SamplingConfig) -> None:
        if not (self.tau_max > 0 and self.tau_min > 0):
            raise ConfigError(f"controller.ead tau_max={self.tau_max}, tau_min={self.tau_min} must both be > 0.")
        if not (self.d0 > 0 and self.d_growth >= 0 and self.d_max >= self.d0):
            raise ConfigError(
                f"controller.ead d0={self.d0}, d_growth={self.d_growth}, d_max={self.d_max}: need d0 > 0, "
                "d_growth >= 0 and d_max >= d0."
            )
        if self.warm_tokens < 0:
            raise ConfigError(f"controller.ead.warm_tokens={self.warm_tokens} must be >= 0.")


def ead_decay(step: int, d0: float, growth: float, d_max: float) -> float:
    """d_s = min(d_0 + growth * s, d_max)."""
    return min(d0 + growth * step, d_max)


def ead_temperature(position: int, step: int, cfg: EADControllerConfig) -> float:
    """tau for completion position `position` at training step `step` (1.0 inside the warm tokens)."""
    if position < cfg.warm_tokens:
        return 1.0
    decay = ead_decay(step, cfg.d0, cfg.d_growth, cfg.d_max)
    exponent = position / decay
    if exponent > 700.0:  # math.exp overflows past ~709; this far out max() would pick tau_min anyway
        return cfg.tau_min
    return max(1.0 + cfg.tau_max - math.exp(exponent), cfg.tau_min)


class EADController(TemperatureController):
    name = "ead"

    def __init__(self, cfg: EADControllerConfig) -> None:
        cfg.validate(SamplingConfig())
        self.config = cfg
        self.step = 0

    def begin_step(self, step: int) -> None:
        self.step = step

    def token_temperature(self, ctx: TokenContext) -> TokenTemperature:
        tau = ead_temperature(ctx.position, ctx.step, self.config)
        return TokenTemperature(torch.full_like(ctx.previous_temperature, tau))

    def metrics(self) -> dict[str, float]:
        c = self.config
        return {"temperature/ead_decay": ead_decay(self.step, c.d0, c.d_growth, c.d_max)}

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
