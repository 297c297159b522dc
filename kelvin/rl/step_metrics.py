"""A step's metrics over all processes: rewards, accuracy, lengths, temperatures (TRL's names where they exist)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from kelvin.controllers.base import Scores
from kelvin.rl.step_record import StepRecord

Gather = Callable[[Tensor], Tensor]  # concatenate a tensor's rows over processes
ReduceSum = Callable[[Tensor], Tensor]  # sum a tensor over processes


def step_metrics(
    step: int,
    record: StepRecord,
    scores: Scores,
    data_position: int,
    num_generations: int,
    gather: Gather,
    reduce_sum: ReduceSum,
) -> dict[str, float]:
    """Batch statistics of step `step` (1-based), logged before the update's own metrics."""
    r = record.rollouts
    g = num_generations
    rewards = gather(record.rewards)
    acc = gather(record.accuracy)
    zero_std = gather(record.std_is_zero.float())
    lengths = gather(r.completion_lengths.float())
    truncated = gather(r.truncated.float())
    mask = r.completion_mask.float()
    tau_sum = reduce_sum(
        torch.stack(
            [
                (r.temperature.double() * mask).sum(),
                (r.temperature.double() ** 2 * mask).sum(),
                mask.double().sum(),
                (scores.entropy_at_one.double() * mask).sum(),
            ]
        )
    ).tolist()
    tau_mean = tau_sum[0] / max(tau_sum[2], 1)
    metrics = {
        "step": step,
        "reward": rewards.nanmean().item(),
        "reward_std": torch.nan_to_num(rewards.view(-1, g).std(dim=1)).mean().item(),
        "frac_reward_zero_std": zero_std.view(-1, g)[:, 0].mean().item(),
        "accuracy": acc.mean().item(),
        "completion_length": lengths.mean().item(),
        "completions/clipped_ratio": truncated.mean().item(),
        "temperature/mean": tau_mean,
        "temperature/std": math.sqrt(max(tau_sum[1] / max(tau_sum[2], 1) - tau_mean**2, 0.0)),
        "entropy/at_T1": tau_sum[3] / max(tau_sum[2], 1),
        "reward_failures": float(record.reward_failures),
        "reward_timeouts": float(record.reward_timeouts),
        "data_position": float(data_position),
    }
    for name, values in record.per_function.items():
        metrics[f"rewards/{name}/mean"] = gather(values).nanmean().item()
    return metrics
