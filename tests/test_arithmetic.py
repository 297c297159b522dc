"""The embedded arithmetic task: reference working-out, deterministic streams, the exact verifier."""

from __future__ import annotations

import re

from kelvin.tasks.arithmetic import arithmetic_task, example_at, extract_answer, verify, working
from kelvin.tasks.base import Example


def test_working_out_is_correct_digit_by_digit():
    for a, b in [(0, 0), (9, 9), (347, 58), (9999, 1), (1205, 98765), (10, 990)]:
        text = working(a, b)
        steps, answer = text.split(">")
        assert int(answer) == a + b
        carry = 0
        ra, rb = str(a)[::-1], str(b)[::-1]
        for k, step in enumerate(steps.split("|")):
            x, y, c, s = map(int, re.fullmatch(r"(\d)\+(\d)\+(\d)=(\d+)", step).groups())
            assert x == (int(ra[k]) if k < len(ra) else 0) and y == (int(rb[k]) if k < len(rb) else 0)
            assert c == carry and s == x + y + c
            carry = s // 10


def test_stream_is_deterministic_and_respects_digit_bounds():
    task = arithmetic_task(seed=7, min_digits=2, max_digits=3, eval_size=50)
    again = arithmetic_task(seed=7, min_digits=2, max_digits=3, eval_size=50)
    assert [task.train(i) for i in range(20)] == [again.train(i) for i in range(20)]
    assert task.train(3) != arithmetic_task(seed=8, min_digits=2, max_digits=3).train(3)
    for ex in [task.train(i) for i in range(200)] + task.test:
        a, b = ex.columns["a"], ex.columns["b"]
        assert 10 <= a <= 999 and 10 <= b <= 999
        assert ex.prompt == f"{a}+{b}=" and ex.answer == str(a + b)
    assert {e.id for e in task.test}.isdisjoint({task.train(i).id for i in range(50)})


def test_verifier_is_exact_match_after_the_last_mark():
    ex = Example(id="x", prompt="347+58=", answer="405")
    assert verify(working(347, 58), ex)
    assert verify("7+8+0=15>405 ", ex)  # surrounding whitespace is ignored
    assert verify("junk>404>405", ex)  # the last mark counts
    assert not verify("7+8+0=15|4+5+1=10>404", ex)
    assert not verify("405", ex)  # no answer mark
    assert not verify(">0405", ex)  # leading zeros are a different answer
    assert not verify(">405>", ex)
    assert extract_answer("no mark") is None


def test_example_ids_are_stable():
    assert example_at(1, 5, 1, 4).id == "train-5"
    assert example_at(1, 5, 1, 4, split="test").id == "test-5"


def test_question_style_for_instruct_models():
    task = arithmetic_task(seed=3, min_digits=2, max_digits=2, eval_size=4, style="question")
    ex = task.train(0)
    a, b = ex.columns["a"], ex.columns["b"]
    assert ex.prompt == f"What is {a} + {b}? Reply with just the number." and task.use_chat_template
    assert task.verify(f"The sum is {a + b}.", ex)
    assert task.verify(f"{a} + {b} = {a + b}", ex)
    assert not task.verify(f"{a + b} ... no, {a + b + 1}", ex)  # the last integer counts
    assert not task.verify("I don't know", ex)
