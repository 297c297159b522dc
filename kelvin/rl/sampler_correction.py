"""The sampler/trainer mismatch: how far the engine's log-probs are from the trainer's, and the weights that correct it.

Kelvin's loss never uses the sampler's log-probs as pi_old: the trainer recomputes them at the recorded tau (the
invariant, DESIGN section 1). A second engine (vLLM) still samples from a slightly different distribution than the
trainer computes (other kernels, other precision), so the samples are off-policy by that much. Truncated importance
sampling re-weights each token's loss by rho = pi_trainer(y) / pi_sampler(y), bounded (Yao et al. 2025, 'Your
efficient RL framework secretly brings you off-policy RL training'; TRL 1.16's `vllm_importance_sampling_*`, whose
modes, defaults and metric names these are).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from kelvin.config import SamplingConfig

MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


@dataclass(frozen=True)
class SamplerCorrection:
    """Truncated or masked importance weights between the sampling engine and the trainer."""

    mode: str = "sequence_mask"
    clip_min: float | None = None
    clip_max: float | None = 3.0

    @staticmethod
    def from_config(s: SamplingConfig) -> SamplerCorrection | None:
        """The run's correction: only when another engine samples and `vllm_importance_sampling_correction` is on."""
        if s.engine == "kelvin" or not s.vllm_importance_sampling_correction:
            return None
        return SamplerCorrection(
            s.vllm_importance_sampling_mode, s.vllm_importance_sampling_clip_min, s.vllm_importance_sampling_clip_max
        )

    @property
    def per_sequence(self) -> bool:
        return self.mode.startswith("sequence")

    def weights(self, trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor) -> Tensor:
        """rho per token [B, L], or per completion [B, 1] (exp of the summed log-ratio), bounded as `mode` says."""
        if self.mode not in MODES:
            raise ValueError(f"sampling.vllm_importance_sampling_mode={self.mode!r} must be one of {MODES}.")
        log_ratio = (trainer_logprobs - sampler_logprobs) * mask
        if self.per_sequence:
            log_ratio = log_ratio.sum(-1, keepdim=True)
        rho = torch.exp(log_ratio)
        if self.mode.endswith("truncate"):
            unbounded = self.clip_min is None and self.clip_max is None
            return rho if unbounded else torch.clamp(rho, min=self.clip_min, max=self.clip_max)
        low = -math.inf if self.clip_min is None else self.clip_min
        high = math.inf if self.clip_max is None else self.clip_max
        return rho.masked_fill((rho < low) | (rho > high), 0.0)

    def metrics(
        self, trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, gather: Callable[[Tensor], Tensor]
    ) -> dict[str, float]:
        """TRL's `sampling/importance_sampling_ratio/{min,mean,max}` over this batch's tokens (or completions) on every
        process; `gather` concatenates one value per process."""
        rho = self.weights(trainer_logprobs, sampler_logprobs, mask)
        flat = rho.flatten() if self.per_sequence else rho[mask.bool()]
        empty = flat.numel() == 0
        local = torch.stack(
            [
                flat.min() if not empty else torch.tensor(math.nan, device=rho.device),
                flat.mean() if not empty else torch.tensor(math.nan, device=rho.device),
                flat.max() if not empty else torch.tensor(math.nan, device=rho.device),
            ]
        ).float()
        every = gather(local.unsqueeze(0)).view(-1, 3)
        return {
            "sampling/importance_sampling_ratio/min": float(every[:, 0].nan_to_num(math.inf).min()),
            "sampling/importance_sampling_ratio/mean": float(every[:, 1].nanmean()),
            "sampling/importance_sampling_ratio/max": float(every[:, 2].nan_to_num(-math.inf).max()),
        }


def logprob_gap_metrics(
    trainer_logprobs: Tensor, sampler_logprobs: Tensor, mask: Tensor, gather: Callable[[Tensor], Tensor]
) -> dict[str, float]:
    """|log pi_trainer - log pi_sampler| over the batch's completion tokens on every process: the sampler's mismatch
    (TRL: `sampling/sampling_logp_difference/{mean,max}`); ~1e-6 for Kelvin's own sampler."""
    gap = (trainer_logprobs - sampler_logprobs).abs()
    m = mask.bool()
    local = torch.stack([(gap * m).sum(), m.sum().to(gap.dtype), (gap * m).max()]).double()
    every = gather(local.unsqueeze(0)).view(-1, 3)
    return {
        "sampler_logprob_gap/max": float(every[:, 2].max()),
        "sampler_logprob_gap/mean": float(every[:, 0].sum() / every[:, 1].sum().clamp(min=1)),
    }
