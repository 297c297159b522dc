"""The embedded default task: multi-digit addition with a digit-by-digit working-out and a final answer.

    prompt      "347+58="
    completion  "7+8+0=15|4+5+1=10|3+0+1=4>405"

Each step `x+y+carry=sum` handles one digit, least significant first; the answer follows the last '>'. Problems
are generated deterministically from a seed: the i-th training problem depends only on (seed, i), so a data
position is one integer. The held-out set uses a different seed stream and excludes nothing by construction;
with 1-4 digit operands collisions with training prompts are rare and harmless for accuracy measurement.
"""

from __future__ import annotations

import random
import re

from kelvin.tasks.base import Example, Task

ANSWER_MARK = ">"


def make_problem(rng: random.Random, min_digits: int, max_digits: int) -> tuple[int, int]:
    def operand() -> int:
        digits = rng.randint(min_digits, max_digits)
        low = 10 ** (digits - 1) if digits > 1 else 0
        return rng.randint(low, 10**digits - 1)

    return operand(), operand()


def working(a: int, b: int) -> str:
    """The reference completion for a + b (without the end-of-sequence token)."""
    ra, rb = str(a)[::-1], str(b)[::-1]
    carry, steps = 0, []
    for k in range(max(len(ra), len(rb))):
        x = int(ra[k]) if k < len(ra) else 0
        y = int(rb[k]) if k < len(rb) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total}")
        carry = total // 10
    return "|".join(steps) + f"{ANSWER_MARK}{a + b}"


def extract_answer(completion: str) -> str | None:
    """The text after the last answer mark, stripped; None when there is no mark."""
    if ANSWER_MARK not in completion:
        return None
    return completion.rsplit(ANSWER_MARK, 1)[1].strip()


def verify(completion: str, example: Example) -> bool:
    """Exact match of the final answer (math-verify would pick a number out of the working-out instead)."""
    return extract_answer(completion) == example.answer


def example_at(seed: int, index: int, min_digits: int, max_digits: int, split: str = "train") -> Example:
    rng = random.Random(f"{split}:{seed}:{index}:{min_digits}:{max_digits}")
    a, b = make_problem(rng, min_digits, max_digits)
    return Example(id=f"{split}-{index}", prompt=f"{a}+{b}=", answer=str(a + b), columns={"a": a, "b": b})


QUESTION = "What is {a} + {b}? Reply with just the number."


def last_integer(completion: str) -> str | None:
    """The last integer in the text (commas inside numbers ignored), for the natural-language question format."""
    found = re.findall(r"-?\d+", completion.replace(",", ""))
    return found[-1] if found else None


def verify_question(completion: str, example: Example) -> bool:
    return last_integer(completion) == example.answer


def as_question(example: Example) -> Example:
    a, b = example.columns["a"], example.columns["b"]
    return Example(id=example.id, prompt=QUESTION.format(a=a, b=b), answer=example.answer, columns=example.columns)


def arithmetic_task(
    seed: int = 1234,
    min_digits: int = 1,
    max_digits: int = 4,
    eval_size: int = 256,
    style: str = "working",
    eval_split: str = "test",
    eval_seed: int | None = None,
) -> Task:
    """style 'working': the character model's scratchpad format; 'question': a plain chat question for pretrained
    instruct models ("What is a + b? Reply with just the number."), checked on the last integer of the reply.

    `seed` orders the training stream; `eval_seed` (default: `seed`) draws the held-out problems, so runs that differ
    in data order can share them. `validation()` gives `eval_size` problems of the validation stream."""
    if style not in ("working", "question"):
        raise ValueError(f"task.arithmetic_style={style!r} must be 'working' or 'question'.")
    if eval_split not in ("test", "validation"):
        raise ValueError(f"task.eval_split={eval_split!r} must be 'test' or 'validation'.")
    held_out_seed = seed if eval_seed is None else eval_seed
    # 'validation' draws from its own stream (the split is part of every example's seed): choosing a setting on it
    # never looks at the test problems.
    test = [example_at(held_out_seed, i, min_digits, max_digits, split=eval_split) for i in range(eval_size)]

    def validation() -> list[Example]:
        return [example_at(held_out_seed, i, min_digits, max_digits, split="validation") for i in range(eval_size)]

    if style == "question":
        return Task(
            name="arithmetic",
            train=lambda i: as_question(example_at(seed, i, min_digits, max_digits)),
            test=[as_question(e) for e in test],
            verify=verify_question,
            use_chat_template=True,
            extract=last_integer,
            validation=lambda: [as_question(e) for e in validation()],
        )
    return Task(
        name="arithmetic",
        train=lambda i: example_at(seed, i, min_digits, max_digits),
        test=test,
        verify=verify,
        use_chat_template=False,
        extract=extract_answer,
        validation=validation,
    )
