"""GRPO-family advantages and losses as small pure functions over typed inputs.

The formulas and normalisers follow TRL 1.16's `GRPOTrainer._compute_loss` so a config ported from TRL gives the
same loss and gradient on the same tensors. Log-probabilities come from `kelvin.rl.logprobs` at the recorded tau.

Layout note: Kelvin takes one optimizer step per rollout batch (per `num_iterations` pass), accumulated over
micro-batches. In TRL's terms that is `steps_per_generation == gradient_accumulation_steps`, so DAPO's normaliser
`num_items_in_batch / num_processes * GA / steps_per_generation` becomes `active tokens of the whole rollout batch
(all processes) / num_processes`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kelvin.config import LossConfig

ADVANTAGE_EPS = 1e-4  # TRL: advantages / (std + 1e-4)


def nanstd(x: Tensor, dim: int | None = None) -> Tensor:
    """Bessel-corrected standard deviation ignoring NaNs (NaN when fewer than two values), as TRL's `nanstd`."""
    if dim is None:
        x, dim = x.reshape(-1), 0
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    correction = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.full_like(var, float("nan")))
    return (var * correction).sqrt().squeeze(dim)


@dataclass
class Advantages:
    advantages: Tensor  # [B]; 0 for unscorable rows
    std_is_zero: Tensor  # [B] bool: the row's group has zero reward spread (all rewards equal)


def group_advantages(rewards: Tensor, num_generations: int, scale_rewards: str) -> Advantages:
    """A_i = (r_i - mean_group r) / (std + 1e-4), with std per group, over the batch, or none.

    `rewards` is [B] with rows grouped contiguously (B = prompts x num_generations). NaN marks an unscorable row
    (every reward function returned None): it is left out of the baseline and gets advantage 0 (TRL 1.16).
    """
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of num_generations={num_generations}.")
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    group_std = nanstd(grouped, dim=1).repeat_interleave(num_generations)
    if scale_rewards in ("group", "none"):
        std = group_std
    elif scale_rewards == "batch":
        std = nanstd(rewards).expand_as(rewards)
    else:
        raise ValueError(f"loss.scale_rewards={scale_rewards!r} must be 'group', 'batch' or 'none'.")
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + ADVANTAGE_EPS)
    # Group-level even with batch scaling (TRL logs the batch std there): dynamic sampling and
    # frac_reward_zero_std are about groups that carry no signal.
    std_is_zero = torch.isclose(group_std, torch.zeros_like(group_std))
    return Advantages(torch.nan_to_num(advantages, nan=0.0), std_is_zero)


@dataclass
class LossInputs:
    """One micro-batch. All [B, L] tensors are per completion token; log-probs at the recorded tau."""

    logprobs: Tensor  # current policy (with grad)
    old_logprobs: Tensor  # behaviour / old policy (no grad)
    advantages: Tensor  # [B]
    mask: Tensor  # [B, L] float, 1 on tokens that enter the loss
    ref_logprobs: Tensor | None = None  # frozen reference, needed when beta > 0
    entropy: Tensor | None = None  # entropy of the sampling distribution, needed when entropy_coef != 0
    # [B, L] or [B, 1]: importance weights pi_trainer / pi_sampler for another engine's samples
    # (kelvin.rl.sampler_correction), multiplying the surrogate before the KL term as TRL 1.16 does
    sampler_weights: Tensor | None = None


@dataclass
class LossSettings:
    loss_type: str = "dapo"
    epsilon: float = 0.2
    epsilon_high: float = 0.2
    beta: float = 0.0
    use_bias_correction_kl: bool = True
    importance_sampling_level: str = "token"
    entropy_coef: float = 0.0
    max_completion_length: int = 1
    grad_accum_steps: int = 1  # micro-batches per optimizer step on this process
    num_items_in_batch: float = 1.0  # dapo: active tokens of the whole rollout batch over all processes
    num_processes: int = 1

    @staticmethod
    def from_config(
        lc: LossConfig, max_completion_length: int, micro_batches: int, active_tokens: float, num_processes: int
    ) -> LossSettings:
        """The `loss` section's settings for one rollout batch of `micro_batches` micro-batches on this process."""
        return LossSettings(
            loss_type=lc.loss_type,
            epsilon=lc.epsilon,
            epsilon_high=lc.epsilon if lc.epsilon_high is None else lc.epsilon_high,
            beta=lc.beta,
            use_bias_correction_kl=lc.use_bias_correction_kl,
            importance_sampling_level=lc.importance_sampling_level,
            entropy_coef=lc.entropy_coef,
            max_completion_length=max_completion_length,
            grad_accum_steps=micro_batches,
            num_items_in_batch=active_tokens,
            num_processes=num_processes,
        )


@dataclass
class LossStats:
    """Sums over the micro-batch, so that metrics aggregate exactly over micro-batches and processes."""

    policy_loss: float  # the micro-batch's loss x micro-batches per step (before the entropy bonus): see grpo_loss
    tokens: float  # unmasked tokens
    clip_low: float  # tokens (or sequences, at sequence level) with ratio < 1 - eps and A < 0
    clip_high: float  # ratio > 1 + eps_high and A > 0
    clip_region: float
    clip_units: float  # what the clip counts are over: tokens, or sequences at sequence level
    kl_sum: float  # sum over tokens of the (bias-corrected) k3 KL
    entropy_sum: float
    ratio_max: float

    @staticmethod
    def zero() -> LossStats:
        return LossStats(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def combine(self, other: LossStats) -> LossStats:
        """Stats of two micro-batches together: sums add, ratio_max is the larger."""
        return LossStats(
            policy_loss=self.policy_loss + other.policy_loss,
            tokens=self.tokens + other.tokens,
            clip_low=self.clip_low + other.clip_low,
            clip_high=self.clip_high + other.clip_high,
            clip_region=self.clip_region + other.clip_region,
            clip_units=self.clip_units + other.clip_units,
            kl_sum=self.kl_sum + other.kl_sum,
            entropy_sum=self.entropy_sum + other.entropy_sum,
            ratio_max=max(self.ratio_max, other.ratio_max),
        )

    def sums(self) -> list[float]:
        """The fields that add over processes, in a fixed order (for one all-reduce): see `loss_metrics`."""
        return [
            self.tokens,
            self.clip_low,
            self.clip_high,
            self.clip_region,
            self.clip_units,
            self.kl_sum,
            self.entropy_sum,
            self.policy_loss,
        ]

    def metrics(self, summed: list[float], passes: int, with_kl: bool) -> dict[str, float]:
        """TRL's loss metrics from `summed` (this object's `sums()` added over processes) over `passes` micro-batch
        passes of every process; ratio/max is this process's."""
        tokens, low, high, region, units, kl, ent, loss = summed
        out = {
            "loss": loss / passes,
            "entropy": ent / max(tokens, 1),
            "clip_ratio/low_mean": low / max(units, 1),
            "clip_ratio/high_mean": high / max(units, 1),
            "clip_ratio/region_mean": region / max(units, 1),
            "ratio/max": self.ratio_max,
        }
        if with_kl:
            out["kl"] = kl / max(tokens, 1)
        return out


def importance_log_weights(logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, level: str) -> Tensor:
    """log rho per token [B, L], or per sequence [B, 1] (GSPO: mean log-ratio over the completion)."""
    log_ratio = logprobs - old_logprobs
    if level == "token":
        return log_ratio
    if level == "sequence":
        return ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    raise ValueError(f"loss.importance_sampling_level={level!r} must be 'token' or 'sequence'.")


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(ref - logp) - (ref - logp) - 1."""
    delta = ref_logprobs - logprobs
    return torch.exp(delta) - delta - 1


def clipped_surrogate(ratio: Tensor, advantages: Tensor, eps_low: float, eps_high: float) -> Tensor:
    """-min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A); advantages broadcast as [B, 1]."""
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    return -torch.min(ratio * advantages, clipped * advantages)


def aggregate(per_token_loss: Tensor, mask: Tensor, s: LossSettings) -> Tensor:
    """The loss_type's normaliser over a micro-batch (TRL 1.16), including gradient-accumulation scaling."""
    if s.loss_type == "grpo":
        return ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / s.grad_accum_steps
    if s.loss_type == "bnpo":
        return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0) / s.grad_accum_steps
    if s.loss_type == "dr_grpo":
        return (per_token_loss * mask).sum() / (per_token_loss.shape[0] * s.max_completion_length) / s.grad_accum_steps
    if s.loss_type == "dapo":
        normaliser = max(float(s.num_items_in_batch), 1.0) / s.num_processes
        return (per_token_loss * mask).sum() / normaliser
    raise ValueError(f"loss.loss_type={s.loss_type!r} must be one of grpo, dr_grpo, dapo, bnpo.")


def grpo_loss(inputs: LossInputs, s: LossSettings) -> tuple[Tensor, LossStats]:
    """Clipped surrogate (+ k3 KL, - entropy bonus) for one micro-batch, normalised as `s.loss_type` says."""
    mask = inputs.mask.float()
    advantages = inputs.advantages.unsqueeze(1)
    log_w = importance_log_weights(inputs.logprobs, inputs.old_logprobs, mask, s.importance_sampling_level)
    ratio = torch.exp(log_w)
    per_token_loss = clipped_surrogate(ratio, advantages, s.epsilon, s.epsilon_high)
    if inputs.sampler_weights is not None:
        per_token_loss = per_token_loss * inputs.sampler_weights
    kl = None
    if s.beta != 0.0:
        if inputs.ref_logprobs is None:
            raise ValueError("loss.beta > 0 needs reference log-probabilities.")
        kl = k3_kl(inputs.logprobs, inputs.ref_logprobs)
        if s.use_bias_correction_kl:
            kl = kl * ratio
        per_token_loss = per_token_loss + s.beta * kl
    loss = aggregate(per_token_loss, mask, s)
    # Logged like TRL: its logged loss is the sum of the accumulated micro-batch losses of an optimizer step (mean over
    # processes); the metrics divide by the micro-batch count, so each micro-batch records loss x micro-batches.
    # (dapo's micro-batch loss is already a share of the whole batch's: recording it unscaled logged loss / GA.)
    policy_loss = float(loss.detach()) * s.grad_accum_steps
    entropy_sum = 0.0
    if inputs.entropy is not None:
        entropy_sum = float((inputs.entropy.detach() * mask).sum())
        if s.entropy_coef != 0.0:
            bonus = (inputs.entropy * mask).sum() / mask.sum().clamp(min=1.0) / s.grad_accum_steps
            loss = loss - s.entropy_coef * bonus

    with torch.no_grad():
        low = (ratio < 1 - s.epsilon) & (advantages < 0)
        high = (ratio > 1 + s.epsilon_high) & (advantages > 0)
        if ratio.shape[1] == 1:  # sequence level: one ratio per row
            units = float(ratio.shape[0])
            counts = [float(low.sum()), float(high.sum()), float((low | high).sum())]
        else:
            units = float(mask.sum())
            counts = [float((low * mask).sum()), float((high * mask).sum()), float(((low | high) * mask).sum())]
        ratio_max = float((ratio.expand_as(mask) * mask).max()) if mask.any() else 1.0
        stats = LossStats(
            policy_loss=policy_loss,
            tokens=float(mask.sum()),
            clip_low=counts[0],
            clip_high=counts[1],
            clip_region=counts[2],
            clip_units=units,
            kl_sum=float((kl.detach() * mask).sum()) if kl is not None else 0.0,
            entropy_sum=entropy_sum,
            ratio_max=ratio_max,
        )
    return loss, stats
