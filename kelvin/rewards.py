"""Rewards: the task's verifier (accuracy) plus optional user reward functions with TRL's signature.

Minimal version: runs the verifier in-process. (Time limits and user functions are being added.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from kelvin.tasks.base import Example, Task


@dataclass
class RewardResult:
    rewards: Tensor  # [B] weighted sum over reward functions; a None counts as 0 (TRL's nansum)
    accuracy: Tensor  # [B] 1.0 where the verifier accepted the completion
    per_function: dict[str, Tensor] = field(default_factory=dict)  # [B] each, NaN where the function gave None
    failures: int = 0  # calls that raised
    timeouts: int = 0  # calls that ran over the time limit


class Rewarder:
    def __init__(
        self, task: Task, functions: list[str] | None = None, weights: list[float] | None = None, timeout_s: float = 5.0
    ) -> None:
        self.task = task
        self.timeout_s = timeout_s

    def __call__(self, completions: list[str], examples: list[Example]) -> RewardResult:
        acc = torch.tensor([float(self.task.verify(c, e)) for c, e in zip(completions, examples)])
        return RewardResult(rewards=acc.clone(), accuracy=acc, per_function={"accuracy": acc.clone()})
