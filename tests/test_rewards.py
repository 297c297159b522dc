"""The Rewarder: time limits, failures, None handling and weights; the arithmetic verifier's exact match."""

from __future__ import annotations

import math
import os
import threading
import time

import pytest
import torch

from kelvin.rewards.functions import Rewarder, resolve_reward_function
from kelvin.tasks.arithmetic import arithmetic_task, verify, working
from kelvin.tasks.base import Example, Task

LIMIT_S = 0.4


def _batch(n: int = 6) -> tuple[Task, list[str], list[Example]]:
    """n arithmetic problems; even rows answered correctly, odd rows off by one."""
    task = arithmetic_task(seed=7, min_digits=1, max_digits=3, eval_size=n)
    completions = []
    for i, e in enumerate(task.test):
        a, b = e.columns["a"], e.columns["b"]
        completions.append(working(a, b) if i % 2 == 0 else working(a, b + 1))
    return task, completions, task.test


def length_reward(completions: list[str], **columns: object) -> list[float]:
    return [len(c) / 10.0 for c in completions]


def raising_reward(completions: list[str], **columns: object) -> list[float]:
    raise RuntimeError("boom")


def sleeping_reward(completions: list[str], **columns: object) -> list[float]:
    time.sleep(60)
    return [1.0] * len(completions)


def test_raising_and_sleeping_functions_give_none_and_are_counted_while_others_score() -> None:
    task, completions, examples = _batch()
    with Rewarder(task, [length_reward, raising_reward, sleeping_reward], timeout_s=LIMIT_S) as rewarder:
        start = time.monotonic()
        result = rewarder(completions, examples)
        elapsed = time.monotonic() - start
    expected_accuracy = torch.tensor([1.0, 0.0] * 3)
    lengths = torch.tensor([len(c) / 10.0 for c in completions])
    assert torch.equal(result.accuracy, expected_accuracy)
    assert torch.allclose(result.per_function["length_reward"], lengths)
    assert torch.isnan(result.per_function["raising_reward"]).all()
    assert torch.isnan(result.per_function["sleeping_reward"]).all()
    assert result.failures == 1 and result.timeouts == 1
    assert torch.allclose(result.rewards, expected_accuracy + lengths)
    assert any("boom" in message for message in result.errors)
    assert elapsed < 30  # the 60 s sleep was cut off


def test_none_and_weights_match_a_hand_computation() -> None:
    task, completions, examples = _batch(4)

    def sparse(completions: list[str], **columns: object) -> list[float | None]:
        return [2.0, None, 0.5, None]

    def nothing(completions: list[str], **columns: object) -> list[float | None]:
        return [None, float("nan"), None, 3.0]

    weights = [2.0, 0.5, -1.0]
    with Rewarder(task, [sparse, nothing], weights=weights, timeout_s=5.0) as rewarder:
        result = rewarder(completions, examples)
    accuracy = [1.0, 0.0, 1.0, 0.0]
    sparse_values = [2.0, None, 0.5, None]
    nothing_values = [None, None, None, 3.0]  # NaN counts as no reward
    for i in range(4):
        terms = [(2.0, accuracy[i]), (0.5, sparse_values[i]), (-1.0, nothing_values[i])]
        expected = sum(w * v for w, v in terms if v is not None)
        assert math.isclose(float(result.rewards[i]), expected, abs_tol=1e-6), (i, result.rewards)
    assert math.isnan(float(result.per_function["sparse"][1]))
    assert math.isnan(float(result.per_function["nothing"][1]))
    assert float(result.per_function["nothing"][3]) == 3.0
    assert result.failures == 0 and result.timeouts == 0


def test_time_limit_works_from_a_non_main_thread() -> None:
    task, completions, examples = _batch(4)
    out: dict[str, object] = {}

    def run() -> None:
        with Rewarder(task, [sleeping_reward, length_reward], timeout_s=LIMIT_S) as rewarder:
            start = time.monotonic()
            out["result"] = rewarder(completions, examples)
            out["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive()
    result = out["result"]
    assert result.timeouts == 1 and result.failures == 0
    assert torch.isnan(result.per_function["sleeping_reward"]).all()
    assert torch.equal(result.accuracy, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert out["elapsed"] < 30


def test_a_hanging_verifier_sample_times_out_alone_and_the_worker_recovers() -> None:
    base, completions, examples = _batch(6)

    def hangs_on_row_three(completion: str, example: Example) -> bool:
        if example.id == examples[3].id:
            while True:  # a busy loop: no signal-friendly sleep
                pass
        return verify(completion, example)

    task = Task("hang", base.train, base.test, hangs_on_row_three, use_chat_template=False)
    with Rewarder(task, [length_reward], timeout_s=LIMIT_S) as rewarder:
        result = rewarder(completions, examples)
        again = rewarder(completions[:3], examples[:3])
    assert result.timeouts == 1 and result.failures == 0
    per_sample = result.per_function["accuracy"]
    assert math.isnan(float(per_sample[3]))
    assert per_sample[[0, 1, 2, 4, 5]].tolist() == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert torch.equal(result.accuracy, torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0]))
    assert not torch.isnan(result.per_function["length_reward"]).any()
    assert again.accuracy.tolist() == [1.0, 0.0, 1.0] and again.timeouts == 0


def test_a_function_that_kills_its_worker_or_returns_garbage_is_a_failure() -> None:
    task, completions, examples = _batch(4)

    def exits(completions: list[str], **columns: object) -> list[float]:
        os._exit(3)

    def wrong_length(completions: list[str], **columns: object) -> list[float]:
        return [1.0]

    with Rewarder(task, [exits, wrong_length, length_reward], timeout_s=5.0) as rewarder:
        result = rewarder(completions, examples)
    assert result.failures == 2 and result.timeouts == 0
    assert torch.isnan(result.per_function["exits"]).all()
    assert torch.isnan(result.per_function["wrong_length"]).all()
    assert not torch.isnan(result.per_function["length_reward"]).any()
    assert torch.equal(result.accuracy, torch.tensor([1.0, 0.0, 1.0, 0.0]))


def test_reward_functions_receive_prompt_answer_and_example_columns() -> None:
    task, completions, examples = _batch(4)
    seen: list[float] = []

    def checks_columns(
        completions: list[str], prompt: list[str], answer: list[str], a: list[int], b: list[int], **rest: object
    ) -> list[float]:
        return [float(p == f"{x}+{y}=" and s == str(x + y)) for p, s, x, y in zip(prompt, answer, a, b)]

    with Rewarder(task, [checks_columns], timeout_s=5.0) as rewarder:
        result = rewarder(completions, examples)
    seen = result.per_function["checks_columns"].tolist()
    assert seen == [1.0, 1.0, 1.0, 1.0]


def test_reward_functions_resolve_from_module_and_file_strings(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_rewards_mod.py").write_text(
        "def shout(completions, **kw):\n    return [2.0 for _ in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from_module = resolve_reward_function("my_rewards_mod:shout")
    from_file = resolve_reward_function(f"{tmp_path / 'my_rewards_mod.py'}:shout")
    assert from_module(["x", "y"]) == [2.0, 2.0] and from_file(["x"]) == [2.0]
    with pytest.raises(ValueError, match=r"reward\.functions"):
        resolve_reward_function("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="has no function"):
        resolve_reward_function("my_rewards_mod:missing")
    with pytest.raises(ValueError, match="module:function"):
        resolve_reward_function("no-colon")


def test_weights_must_match_the_number_of_rewards() -> None:
    task, _, _ = _batch(2)
    with pytest.raises(ValueError, match=r"reward\.weights has 3 entries"):
        Rewarder(task, [length_reward], weights=[1.0, 1.0, 1.0])


# ---- the arithmetic verifier: exact match of the text after the last '>' --------------------------------------------


def _example(answer: str) -> Example:
    return Example(id="x", prompt="347+58=", answer=answer)


@pytest.mark.parametrize(
    ("completion", "accepted"),
    [
        ("7+8+0=15|4+5+1=10|3+0+1=4>405", True),  # the reference format
        (">405", True),
        ("7+8+0=15|4+5+1=10|3+0+1=4> 405 ", True),  # spaces around the answer are stripped
        ("7+8+0=15|4+5+1=10|3+0+1=4>406", False),  # wrong answer
        ("7+8+0=15|4+5+1=10|3+0+1=4 405", False),  # no answer mark
        ("405", False),  # no mark at all, even if the number is right
        ("7+8+0=15>0405", False),  # leading zero: not the exact answer
        (">40 5", False),  # a space inside the number
        (">406>405", True),  # the last mark counts
        (">405>", False),  # nothing after the last mark
        ("", False),
    ],
)
def test_arithmetic_verifier_exact_match(completion: str, accepted: bool) -> None:
    assert verify(completion, _example("405")) is accepted


def test_a_worker_killed_between_batches_is_replaced() -> None:
    task, completions, examples = _batch(4)
    with Rewarder(task, [length_reward], timeout_s=5.0) as rewarder:
        first = rewarder(completions, examples)
        rewarder._worker.process.kill()
        rewarder._worker.process.join()
        second = rewarder(completions, examples)
    assert torch.equal(first.rewards, second.rewards)
    assert second.failures == 0 and second.timeouts == 0


def test_math_verifier_scores_through_the_worker_from_a_thread() -> None:
    from kelvin.tasks.math_common import MathVerifier

    examples = [Example(id=str(i), prompt="q", answer=a) for i, a in enumerate(["\\frac{1}{2}", "18", "(1, 2)"])]
    task = Task("math", examples.__getitem__, examples, MathVerifier(timeout_s=5.0))
    completions = ["so \\boxed{0.5}", "The answer is 19.", "\\boxed{(1,2)}"]
    out: dict[str, object] = {}

    def run() -> None:
        with Rewarder(task, timeout_s=10.0) as rewarder:
            out["result"] = rewarder(completions, examples)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=120)
    assert out["result"].accuracy.tolist() == [1.0, 0.0, 1.0]
    assert out["result"].failures == 0 and out["result"].timeouts == 0
