"""Procedural problems from reasoning-gym (pip install 'kelvin[reasoning-gym]'): an offline source of problems of
tunable difficulty (basic_arithmetic, chain_sum, products, countdown, gsm_symbolic, ... 100+ generators).

Stream: the i-th training problem is item i mod BLOCK of the generator seeded by (task.seed, i // BLOCK), so the
stream is endless, seeded and one integer long (a single huge generator is not an option: some, e.g. gsm_symbolic,
spend time in proportion to their `size` when built). The test set is `eval_size` items from a separate seed.

Reward: binary. The completion's final answer (last \\boxed{}, else the last <answer>...</answer>, else the text after
the last "answer is", else the last non-empty line) is scored by the generator's own `score_answer`, and only a score
of 1.0 counts. The scorer, not exact string match, because several generators accept many answers (countdown: any
expression that reaches the target); thresholded, because its partial credit rewards wrong answers (0.07 for
"The answer is 3" against "3"; 0.22 for a longer sentence around the right number) and group-relative advantages
would push the policy toward them.
"""

from __future__ import annotations

import random
import re
from typing import Any

from kelvin.rewards.math_answers import extract_boxed
from kelvin.tasks.base import Example, Task

BLOCK = 1000  # problems per seeded generator of the training stream
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_ANSWER_IS = re.compile(r"answer is[:\s]*(.+)", re.IGNORECASE)
RESERVED_OPTIONS = ("seed", "size")


def _import() -> Any:
    try:
        import reasoning_gym
    except ImportError:
        raise ImportError(
            "task.name=reasoning_gym needs the reasoning-gym package: pip install 'kelvin[reasoning-gym]' "
            "(reasoning-gym==0.1.25)."
        ) from None
    return reasoning_gym


def make_generator(name: str, options: dict[str, Any], seed: int, size: int) -> Any:
    """reasoning_gym.create_dataset(name, seed, size, **options), with errors that name the task.* field to fix."""
    reasoning_gym = _import()
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        close = [n for n in DATASETS if name.replace("_", "") in n.replace("_", "")][:5]
        hint = f" Close: {close}." if close else ""
        raise ValueError(f"task.dataset={name!r} is not a reasoning-gym generator.{hint} All: {sorted(DATASETS)}.")
    reserved = [key for key in RESERVED_OPTIONS if key in options]
    if reserved:
        raise ValueError(f"task.options sets {reserved}: Kelvin sets them (task.seed, task.eval_size); remove them.")
    try:
        return reasoning_gym.create_dataset(name, seed=seed, size=size, **options)
    except (TypeError, AssertionError, ValueError) as err:
        raise ValueError(
            f"task.options={options!r} is not valid for reasoning-gym's {name!r} generator ({err}); see its "
            "config class in reasoning_gym for the allowed options."
        ) from err


def final_answer(completion: str) -> str | None:
    """The answer a completion states (module docstring for the order), or None for an empty completion."""
    boxed = extract_boxed(completion)
    if boxed is not None:
        return boxed.strip()
    tags = _ANSWER_TAG.findall(completion)
    if tags:
        return tags[-1].strip()
    lines = [line.strip() for line in completion.strip().splitlines() if line.strip()]
    if not lines:
        return None
    stated = _ANSWER_IS.findall(completion)
    if stated:
        return stated[-1].strip().rstrip(".").strip("$ ")
    return lines[-1]


def _example(entry: dict[str, Any], split: str, index: int, instruction: str | None) -> Example:
    suffix = f"\n\n{instruction.strip()}" if instruction else ""
    # The entry's question and metadata travel as columns: the scorer needs them, and reward functions see them.
    columns = {"question": entry["question"], "metadata": entry["metadata"]}
    return Example(f"{split}-{index}", entry["question"] + suffix, str(entry["answer"]), columns)


class ReasoningGymStream:
    """The i-th training example: item i mod BLOCK of the generator seeded by (seed, i // BLOCK)."""

    def __init__(self, name: str, options: dict[str, Any], seed: int, instruction: str | None) -> None:
        self.name, self.options, self.seed, self.instruction = name, dict(options), seed, instruction
        self._block = -1
        self._generator: Any = None

    def __call__(self, index: int) -> Example:
        block, position = divmod(index, BLOCK)
        if block != self._block:
            block_seed = random.Random(f"train:{self.seed}:{block}").randrange(2**31)
            self._generator, self._block = make_generator(self.name, self.options, block_seed, BLOCK), block
        return _example(self._generator[position], "train", index, self.instruction)


class ReasoningGymVerifier:
    """verify(completion, example): the generator's score_answer on the stated final answer is 1.0."""

    def __init__(self, name: str, options: dict[str, Any]) -> None:
        self.scorer = make_generator(name, options, seed=0, size=1)

    def __call__(self, completion: str, example: Example) -> bool:
        entry = {"question": example.columns["question"], "answer": example.answer, **example.columns}
        return self.scorer.score_answer(final_answer(completion), entry) >= 1.0


def reasoning_gym_task(
    name: str,
    options: dict[str, Any] | None = None,
    seed: int = 1234,
    eval_size: int = 256,
    instruction: str | None = None,
    eval_seed: int | None = None,
) -> Task:
    """Procedural problems of one reasoning-gym generator: an endless seeded training stream, `eval_size` test
    problems and `eval_size` validation problems from two other seeds (`eval_seed`, default `seed`), and the
    thresholded binary reward of the module docstring."""
    options = dict(options or {})
    held_out_seed = seed if eval_seed is None else eval_seed

    def held_out(split: str) -> list[Example]:
        generator = make_generator(name, options, random.Random(f"{split}:{held_out_seed}").randrange(2**31), eval_size)
        return [_example(generator[i], split, i, instruction) for i in range(eval_size)]

    return Task(
        name=f"reasoning_gym-{name}",
        train=ReasoningGymStream(name, options, seed, instruction),
        test=held_out("test"),
        verify=ReasoningGymVerifier(name, options),
        use_chat_template=True,
        extract=final_answer,
        validation=lambda: held_out("validation"),
    )
