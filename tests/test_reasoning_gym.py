"""task.name=reasoning_gym: seeded endless stream, fixed test set, options passed through, binary reward."""

from __future__ import annotations

import pytest

from kelvin.config import load_config
from kelvin.tasks import build_task
from kelvin.tasks.base import Example
from kelvin.tasks.reasoning_gym import BLOCK, final_answer, make_generator, reasoning_gym_task


def test_stream_is_seeded_endless_and_apart_from_the_test_set() -> None:
    task = reasoning_gym_task("chain_sum", {"min_terms": 4, "max_terms": 4}, seed=7, eval_size=5)
    again = reasoning_gym_task("chain_sum", {"min_terms": 4, "max_terms": 4}, seed=7, eval_size=5)
    other = reasoning_gym_task("chain_sum", {"min_terms": 4, "max_terms": 4}, seed=8, eval_size=5)
    indices = [0, 1, BLOCK - 1, BLOCK, 3 * BLOCK + 5]
    assert [task.train(i).prompt for i in indices] == [again.train(i).prompt for i in indices]
    assert [task.train(i).prompt for i in indices] != [other.train(i).prompt for i in indices]
    assert task.train(0).prompt != task.train(BLOCK).prompt  # a new block is a new generator, not a repeat
    assert [e.prompt for e in task.test] == [e.prompt for e in again.test] and len(task.test) == 5
    assert not {e.prompt for e in task.test} & {task.train(i).prompt for i in range(50)}
    # The generator's options reach it: every problem has exactly four terms.
    assert all(task.train(i).columns["metadata"]["num_terms"] == 4 for i in range(20))


def test_reward_is_the_scorer_thresholded_at_one() -> None:
    task = reasoning_gym_task("chain_sum", {}, seed=1, eval_size=1)
    example = task.test[0]
    gold = example.answer
    assert task.verify(f"Adding up: \\boxed{{{gold}}}", example)
    assert task.verify(f"The answer is {gold}.", example)
    assert task.verify(f"<answer>{gold}</answer>", example)
    assert not task.verify(f"\\boxed{{{int(gold) + 1}}}", example)
    # reasoning-gym's own scorer gives partial credit for a sentence that contains the gold answer; Kelvin gives 0.
    sentence = f"I think it could be {gold} apples"
    scorer = make_generator("chain_sum", {}, seed=0, size=1)
    entry = {"question": example.columns["question"], "answer": gold, "metadata": example.columns["metadata"]}
    assert 0 < scorer.score_answer(sentence, entry) < 1
    assert not task.verify(sentence, example)


def test_countdown_accepts_any_expression_that_reaches_the_target() -> None:
    task = reasoning_gym_task("countdown", {}, seed=3, eval_size=1)
    example = task.test[0]
    assert task.verify(f"\\boxed{{{example.answer}}}", example)
    # Another string with the same value from the same numbers: exact match would call it wrong.
    assert task.verify(f"\\boxed{{({example.answer})}}", example)
    assert not task.verify("\\boxed{1 + 1}", example)


def test_final_answer_order() -> None:
    assert final_answer("x \\boxed{3} <answer>4</answer>") == "3"
    assert final_answer("<answer>1</answer> then <answer> 4 </answer>") == "4"
    assert final_answer("So the answer is: -240.") == "-240"
    assert final_answer("work\n\n12 * 3 - 4\n") == "12 * 3 - 4"
    assert final_answer("  \n ") is None


def test_config_builds_it_and_bad_options_name_the_field() -> None:
    config = load_config(
        None, ["task.name=reasoning_gym", "task.dataset=products", "task.eval_size=3", "task.options={min_terms: 2}"]
    )
    task = build_task(config)
    assert task.name == "reasoning_gym-products" and len(task.test) == 3
    assert isinstance(task.train(0), Example)
    with pytest.raises(ValueError, match=r"task\.options"):
        reasoning_gym_task("chain_sum", {"min_terms": 5, "max_terms": 2}, eval_size=1)
    with pytest.raises(ValueError, match=r"task\.options sets \['seed'\]"):
        reasoning_gym_task("chain_sum", {"seed": 3}, eval_size=1)
    with pytest.raises(ValueError, match=r"task\.dataset='chainsum'.*chain_sum"):
        reasoning_gym_task("chainsum", {}, eval_size=1)
