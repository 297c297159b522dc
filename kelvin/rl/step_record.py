"""The typed output of a step's sample -> reward -> advantages stages, for this process's rows."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kelvin.rl.rollouts import Rollouts, concat_rollouts
from kelvin.tasks.base import Example


@dataclass
class StepRecord:
    """The rows of one rollout batch after sampling and rewarding (this process's share)."""

    rollouts: Rollouts
    examples: list[Example]
    texts: list[str]
    rewards: torch.Tensor
    accuracy: torch.Tensor
    advantages: torch.Tensor
    std_is_zero: torch.Tensor
    per_function: dict[str, torch.Tensor] = field(default_factory=dict)
    reward_failures: int = 0
    reward_timeouts: int = 0
    sampling_rounds: int = 1

    def select(self, rows: torch.Tensor) -> StepRecord:
        """The given rows (a 1-D index tensor); failure counts are the whole record's."""
        idx = rows.tolist()
        return StepRecord(
            rollouts=self.rollouts.select(rows),
            examples=[self.examples[i] for i in idx],
            texts=[self.texts[i] for i in idx],
            rewards=self.rewards[rows],
            accuracy=self.accuracy[rows],
            advantages=self.advantages[rows],
            std_is_zero=self.std_is_zero[rows],
            per_function={k: v[rows] for k, v in self.per_function.items()},
            reward_failures=self.reward_failures,
            reward_timeouts=self.reward_timeouts,
        )

    @staticmethod
    def merge(parts: list[StepRecord], pad_id: int) -> StepRecord:
        """The rows of every part, in order (completions right-padded with `pad_id` to the longest)."""
        return StepRecord(
            rollouts=concat_rollouts([p.rollouts for p in parts], pad_id),
            examples=[e for p in parts for e in p.examples],
            texts=[x for p in parts for x in p.texts],
            rewards=torch.cat([p.rewards for p in parts]),
            accuracy=torch.cat([p.accuracy for p in parts]),
            advantages=torch.cat([p.advantages for p in parts]),
            std_is_zero=torch.cat([p.std_is_zero for p in parts]),
            per_function={k: torch.cat([p.per_function[k] for p in parts]) for k in parts[0].per_function},
            reward_failures=sum(p.reward_failures for p in parts),
            reward_timeouts=sum(p.reward_timeouts for p in parts),
        )
