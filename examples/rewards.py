"""Example reward functions for `reward.functions`, with TRL's signature. Run it to see them score a small batch:

    python examples/rewards.py
    kelvin train recipes/arithmetic-fixed.yaml reward.weights=[1.0,0.1,0.2] \
        reward.functions=examples/rewards.py:brevity,examples/rewards.py:format_bonus

Each function gets the completions as its first argument and TRL's keyword arguments: `prompts`, `completion_ids`
(token ids of each completion, no padding), `trainer_state` (`.global_step`), `answer` and every dataset column,
all lists with one entry per completion. Return one float per completion, or None for "no reward for this one".
Accept **kwargs so that new arguments never break a function. `async def` functions are awaited.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

_FINAL = re.compile(r">\s*(-?\d+)\s*$")


def brevity(completions: list[str], completion_ids: list[list[int]], **kwargs: Any) -> list[float]:
    """Prefer short completions: 1.0 for an empty one, falling linearly to 0.0 at 64 tokens."""
    return [max(0.0, 1.0 - len(ids) / 64) for ids in completion_ids]


def format_bonus(completions: list[str], answer: list[str], trainer_state: Any, **kwargs: Any) -> list[float | None]:
    """Reward the arithmetic task's '> 123' final-answer line during the first 50 steps, then stop (None: no reward)."""
    if trainer_state.global_step >= 50:
        return [None] * len(completions)
    return [1.0 if _FINAL.search(c.strip()) else 0.0 for c in completions]


async def prompt_echo_penalty(completions: list[str], prompts: list[str], **kwargs: Any) -> list[float]:
    """An async reward function (awaited by Kelvin, as by TRL): -1 when a completion repeats its prompt."""
    await asyncio.sleep(0)  # stands for an awaited call, e.g. a judge model behind an async client
    return [
        -1.0 if prompt.strip() and prompt.strip() in completion else 0.0
        for prompt, completion in zip(prompts, completions)
    ]


if __name__ == "__main__":
    from kelvin.rewards.functions import Rewarder
    from kelvin.tasks.arithmetic import arithmetic_task, working

    task = arithmetic_task(seed=0, min_digits=1, max_digits=2, eval_size=3)
    examples = task.test
    completions = [working(e.columns["a"], e.columns["b"]) for e in examples]
    completions[1] = "no idea"
    with Rewarder(task, [brevity, format_bonus, prompt_echo_penalty]) as rewarder:
        result = rewarder(completions, examples, completion_ids=[[0] * len(c) for c in completions], step=3)
    for name, values in result.per_function.items():
        print(f"{name:>20}: {[round(v, 3) for v in values.tolist()]}")
    print(f"{'total':>20}: {[round(v, 3) for v in result.rewards.tolist()]}  (failures {result.failures})")
