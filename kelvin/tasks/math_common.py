"""What the math tasks share: the prompt instruction, the answer verifier and a deterministic training stream."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from kelvin.rewards.math_answers import extract_final_answer, math_equal
from kelvin.tasks.base import Example

# The instruction of the Qwen2.5-Math evaluation suite (and of TAMPO/IntroLLM's benchmarks): the final answer goes in
# \boxed{}, which `extract_final_answer` reads first.
MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def math_prompt(problem: str) -> str:
    """The user message for a math problem: the problem, a blank line, then MATH_INSTRUCTION."""
    return f"{problem.strip()}\n\n{MATH_INSTRUCTION}"


@dataclass(frozen=True)
class MathVerifier:
    """verify(completion, example): the completion's final answer (extract_final_answer) is math_equal to the gold
    answer, with math-verify bounded by `timeout_s` (over time counts as wrong)."""

    timeout_s: float = 5.0

    def __call__(self, completion: str, example: Example) -> bool:
        return math_equal(extract_final_answer(completion), example.answer, self.timeout_s)


class ShuffledStream:
    """The i-th training example of an endless stream: every epoch is a fresh seeded permutation of the rows, so
    the data position is one integer."""

    def __init__(self, rows: Sequence[Example], seed: int) -> None:
        if not rows:
            raise ValueError("a training stream needs at least one example")
        self.rows = list(rows)
        self.seed = seed
        self._epoch = -1
        self._order: list[int] = []

    def __call__(self, index: int) -> Example:
        epoch, position = divmod(index, len(self.rows))
        if epoch != self._epoch:
            self._order = list(range(len(self.rows)))
            random.Random(f"{self.seed}:{epoch}").shuffle(self._order)
            self._epoch = epoch
        return self.rows[self._order[position]]


class CycleStream:
    """The i-th training example cycles over the rows in file order."""

    def __init__(self, rows: Sequence[Example]) -> None:
        if not rows:
            raise ValueError("a training stream needs at least one example")
        self.rows = list(rows)

    def __call__(self, index: int) -> Example:
        return self.rows[index % len(self.rows)]
