"""Reward functions get TRL's arguments, async ones are awaited, failures name the right function, math-verify
time-outs are counted, and the example file under examples/ runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kelvin.rewards.functions import Rewarder, resolve_reward_function
from kelvin.tasks.arithmetic import arithmetic_task, working
from kelvin.tasks.base import Example, Task

REPO = Path(__file__).resolve().parent.parent
SEEN: dict[str, object] = {}


def _batch(n: int = 4) -> tuple[Task, list[str], list[Example]]:
    task = arithmetic_task(seed=3, min_digits=1, max_digits=2, eval_size=n)
    return task, [working(e.columns["a"], e.columns["b"]) for e in task.test], task.test


def recording(completions, prompts, completion_ids, trainer_state, answer, a, b, **kwargs):
    # Runs in the worker: report what arrived through the return value (one number per completion).
    assert prompts == kwargs["prompt"] and len(completion_ids) == len(completions)
    return [float(trainer_state.global_step * 1000 + len(ids) * 10 + (int(x) + int(y) == int(ans)))
            for ids, x, y, ans in zip(completion_ids, a, b, answer)]  # fmt: skip


def test_reward_functions_get_trl_arguments():
    task, completions, examples = _batch()
    ids = [list(range(i + 1)) for i in range(len(completions))]
    with Rewarder(task, [recording]) as rewarder:
        result = rewarder(completions, examples, completion_ids=ids, step=7)
    assert result.failures == 0, result.errors
    # global_step 7, len(ids) = i + 1, and the dataset columns a, b, answer agree with each other
    assert result.per_function["recording"].tolist() == [7000 + (i + 1) * 10 + 1 for i in range(4)]


async def async_reward(completions, **kwargs):
    import asyncio

    await asyncio.sleep(0.01)
    return [0.25] * len(completions)


class AsyncCallable:
    __name__ = "async_callable"

    async def __call__(self, completions, **kwargs):
        return [0.5] * len(completions)


def test_async_reward_functions_are_awaited():
    task, completions, examples = _batch()
    with Rewarder(task, [async_reward, AsyncCallable()]) as rewarder:
        result = rewarder(completions, examples)
    assert result.failures == 0, result.errors
    assert result.per_function["async_reward"].tolist() == [0.25] * 4
    assert result.per_function["async_callable"].tolist() == [0.5] * 4


def fine(completions, **kwargs):
    return [1.0] * len(completions)


def raises(completions, **kwargs):
    raise RuntimeError("boom")


def exits(completions, **kwargs):
    sys.exit(3)


def interrupts(completions, **kwargs):
    raise KeyboardInterrupt


def crashes(completions, **kwargs):
    os._exit(9)


@pytest.mark.parametrize("culprit", [raises, exits, interrupts, crashes])
def test_a_failure_names_the_function_that_failed(culprit):
    task, completions, examples = _batch()
    with Rewarder(task, [fine, culprit]) as rewarder:
        result = rewarder(completions, examples)
    assert result.failures == 1
    assert [e.split(":", 1)[0] for e in result.errors] == [culprit.__name__], result.errors
    assert result.per_function["fine"].tolist() == [1.0] * 4  # the other function still scored
    assert result.accuracy.tolist() == [1.0] * 4


def test_math_verify_timeouts_are_counted_not_scored_zero(monkeypatch):
    from kelvin.rewards import math_answers

    def slow_parse(answer):
        time.sleep(5)
        return []

    monkeypatch.setattr(math_answers, "_parse_answer", slow_parse)
    gold = Example(id="g0", prompt="1+1?", answer="2")
    checker = Task(
        name="slow", train=lambda i: gold, test=[gold], verify=lambda c, e: math_answers.math_equal(c, e.answer, 0.3)
    )
    with Rewarder(checker, timeout_s=3.0) as rewarder:
        result = rewarder(["\\boxed{2}", "\\boxed{2}"], [gold, gold])
    assert result.timeouts == 2 and result.failures == 0, result.errors
    assert "timed out" in result.errors[0]


def test_the_example_reward_file_runs_and_resolves():
    for name in ("brevity", "format_bonus", "prompt_echo_penalty"):
        assert callable(resolve_reward_function(f"{REPO}/examples/rewards.py:{name}"))
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "rewards.py")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = {line.split(":")[0].strip(): line for line in out.stdout.splitlines()}
    assert "(failures 0)" in lines["total"]
    assert "[1.0, 0.0, 1.0]" in lines["format_bonus"]  # completion 1 is "no idea": no final-answer line
