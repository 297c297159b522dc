"""Evaluation metrics against brute force, and evaluate() end to end on a tiny model."""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from fractions import Fraction

import pytest
import torch

from kelvin.controllers.fixed import FixedController
from kelvin.eval.cli import main as eval_main
from kelvin.eval.evaluation import (
    avg_at_k,
    evaluate,
    evaluate_suite,
    majority_at_k,
    majority_vote,
    pass_at_k,
    pass_k_values,
)
from kelvin.models.loading import build_char_tokenizer, build_tiny_model, save_pretrained
from kelvin.tasks.arithmetic import arithmetic_task
from kelvin.tasks.base import Example, Task
from kelvin.tasks.prompts import encode_prompts

# ---- pass@k, avg@k, maj@k ------------------------------------------------------------------------------------------


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """The fraction of all k-subsets of n samples (c correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_of_all_subsets() -> None:
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert math.isclose(pass_at_k(n, c, k), _brute_pass_at_k(n, c, k), abs_tol=1e-12), (n, c, k)


def test_pass_at_k_is_exact_for_large_n() -> None:
    for n, c, k in [(200, 3, 50), (1000, 1, 1), (1000, 10, 64), (512, 500, 8)]:
        exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
        assert math.isclose(pass_at_k(n, c, k), float(exact), rel_tol=1e-10, abs_tol=1e-12), (n, c, k)


@pytest.mark.parametrize(("n", "c", "k"), [(0, 0, 1), (4, 5, 1), (4, -1, 1), (4, 2, 0), (4, 2, 5)])
def test_pass_at_k_rejects_impossible_counts(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_avg_at_k_and_pass_k_values() -> None:
    assert avg_at_k([True, False, False, True]) == 0.5
    assert avg_at_k([True, False, False, True], k=3) == pytest.approx(1 / 3)
    assert pass_k_values(1) == [1]
    assert pass_k_values(8) == [1, 2, 4, 8]
    assert pass_k_values(6) == [1, 2, 4, 6]


def test_majority_vote_on_constructed_votes() -> None:
    assert majority_vote(["5", "7", "5"]) == 0
    assert majority_at_k(["5", "7", "5"], [False, True, False]) == 0.0
    assert majority_at_k(["7", "5", "5"], [False, True, True]) == 1.0
    # a tie goes to the answer seen first, whatever its correctness
    assert majority_vote(["7", "5", "5", "7"]) == 0
    assert majority_at_k(["7", "5", "5", "7"], [False, True, True, False]) == 0.0
    assert majority_at_k(["5", "7", "7", "5"], [True, False, False, True]) == 1.0
    # samples without an answer do not vote
    assert majority_vote([None, "3", None, "4"]) == 1
    assert majority_vote([None, None]) is None
    assert majority_at_k([None, None], [False, False]) == 0.0
    # answers are compared after normalisation
    assert majority_vote(["999", "1,000", " 1000 ", "999.0", "$1000$"]) == 1
    # only the first k samples vote
    assert majority_at_k(["1", "2", "2", "2"], [True, False, False, False], k=2) == 1.0
    assert majority_at_k(["1", "2", "2", "2"], [True, False, False, False], k=4) == 0.0


# ---- evaluate() end to end ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, object]:
    tokenizer = build_char_tokenizer()
    return build_tiny_model("1m", len(tokenizer), seed=0), tokenizer


def _first_char_even(completion: str, example: Example) -> bool:
    """A verifier with mixed outcomes on an untrained model's random text."""
    return bool(completion) and ord(completion[0]) % 2 == 0


def _first_letter(completion: str) -> str | None:
    letters = [ch for ch in completion if ch.isalpha()]
    return letters[0] if letters else None


def test_evaluate_numbers_are_consistent_with_the_samples(tiny) -> None:
    model, tokenizer = tiny
    examples = arithmetic_task(seed=3, eval_size=6).test
    k = 4
    result = evaluate(
        model,
        tokenizer,
        examples,
        _first_char_even,
        _first_letter,
        k=k,
        temperature=1.0,
        max_new_tokens=8,
        batch_size=10,
        seed=5,
        use_chat_template=False,
        keep_completions=True,
    )
    assert result.num_examples == 6 and all(len(p.correct) == k for p in result.problems)
    # re-verify every kept completion in-process
    for problem, example in zip(result.problems, examples):
        assert problem.correct == [_first_char_even(c, example) for c in problem.completions]
        assert problem.answers == [_first_letter(c) for c in problem.completions]
    flat = [x for p in result.problems for x in p.correct]
    assert 0 < sum(flat) < len(flat), "the test needs mixed outcomes"
    assert result.avg_at_k == pytest.approx(sum(flat) / len(flat))
    assert result.pass_at_k[1] == pytest.approx(result.avg_at_k)
    assert result.pass_at_k[k] == pytest.approx(sum(any(p.correct) for p in result.problems) / 6)
    pairs = [
        sum(any(p.correct[i] for i in pair) for pair in itertools.combinations(range(k), 2)) / 6
        for p in result.problems
    ]
    assert result.pass_at_k[2] == pytest.approx(sum(pairs) / 6)
    expected_majority = []
    for p in result.problems:
        votes = Counter(a for a in p.answers if a is not None)
        if not votes:
            expected_majority.append(0.0)
            continue
        winner = votes.most_common(1)[0][0]  # most_common keeps first-seen order among ties
        expected_majority.append(float(p.correct[p.answers.index(winner)]))
    assert result.maj_at_k == pytest.approx(sum(expected_majority) / 6)
    assert result.setting == "T=1"
    assert 1 <= result.mean_completion_tokens <= 8


def test_evaluate_is_seeded_greedy_repeats_and_a_controller_replaces_the_temperature(tiny) -> None:
    model, tokenizer = tiny
    task = arithmetic_task(seed=4, eval_size=5)
    options = dict(k=4, max_new_tokens=6, seed=11, use_chat_template=False, keep_completions=True)
    first = evaluate(model, tokenizer, task.test, task.verify, task.extract, temperature=0.7, **options)
    again = evaluate(model, tokenizer, task.test, task.verify, task.extract, temperature=0.7, **options)
    fixed = evaluate(model, tokenizer, task.test, task.verify, task.extract, controller=FixedController(0.7), **options)
    assert [p.completions for p in first.problems] == [p.completions for p in again.problems]
    assert [p.completions for p in fixed.problems] == [p.completions for p in first.problems]
    assert fixed.setting == "controller:fixed" and fixed.temperature is None
    greedy = evaluate(model, tokenizer, task.test, task.verify, task.extract, temperature=0.0, **options)
    assert greedy.setting == "greedy"
    for problem in greedy.problems:
        assert len(set(problem.completions)) == 1 and len(problem.completions) == 4
    assert greedy.pass_at_k[4] == pytest.approx(greedy.avg_at_k)


def test_evaluate_suite_averages_each_setting_over_benchmarks(tiny) -> None:
    model, tokenizer = tiny
    tasks = [
        Task("a", lambda i: None, arithmetic_task(seed=5, eval_size=4).test, _first_char_even, False, 0, _first_letter),
        Task("b", lambda i: None, arithmetic_task(seed=6, eval_size=3).test, _first_char_even, False, 0, _first_letter),
    ]
    report = evaluate_suite(model, tokenizer, tasks, temperatures=[0.5, 1.5], k=2, max_new_tokens=5, seed=1)
    assert [(r.name, r.setting) for r in report.results] == [
        ("a", "T=0.5"),
        ("b", "T=0.5"),
        ("a", "T=1.5"),
        ("b", "T=1.5"),
    ]
    for setting in ("T=0.5", "T=1.5"):
        pair = [r for r in report.results if r.setting == setting]
        for metric in ("avg@2", "pass@1", "pass@2", "maj@2"):
            assert report.averages[setting][metric] == pytest.approx(
                (pair[0].metrics()[metric] + pair[1].metrics()[metric]) / 2
            )


def test_prompts_use_the_chat_template_when_the_tokenizer_has_one() -> None:
    tokenizer = build_char_tokenizer()
    raw_ids, raw_mask = encode_prompts(tokenizer, ["1+2=", "10+20="], use_chat_template=True)
    assert raw_mask.tolist() == [[0, 0, 1, 1, 1, 1, 1], [1] * 7]  # left padding; BOS added by the tokenizer
    assert tokenizer.decode(raw_ids[0, 2:].tolist(), skip_special_tokens=True) == "1+2="
    tokenizer.chat_template = (
        "{% for m in messages %}q:{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}|a:{% endif %}"
    )
    ids, mask = encode_prompts(tokenizer, ["1+2="], use_chat_template=True)
    assert tokenizer.decode(ids[0].tolist()) == "q:1+2=|a:"
    assert mask.tolist() == [[1] * len("q:1+2=|a:")]
    ids, _ = encode_prompts(tokenizer, ["1+2="], use_chat_template=False)
    assert tokenizer.decode(ids[0].tolist(), skip_special_tokens=True) == "1+2="
    ids, _ = encode_prompts(tokenizer, ["1234+5678="], use_chat_template=False, max_prompt_length=4)
    assert tokenizer.decode(ids[0].tolist()) == "678="


def test_eval_command_writes_json_for_a_run_folder(tiny, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    model, tokenizer = tiny
    save_pretrained(model, tokenizer, tmp_path / "run" / "model")
    output = tmp_path / "results.json"
    code = eval_main(
        [
            str(tmp_path / "run"),
            "--benchmarks",
            "arithmetic",
            "--k",
            "2",
            "--temperature",
            "0,1",
            "--max-new-tokens",
            "6",
            "--limit",
            "4",
            "--output",
            str(output),
        ]
    )
    assert code == 0
    data = json.loads(output.read_text())
    assert [r["setting"] for r in data["results"]] == ["greedy", "T=1"]
    assert all(r["num_examples"] == 4 and r["k"] == 2 for r in data["results"])
    assert set(data["averages"]) == {"greedy", "T=1"}
    assert "arithmetic" in capsys.readouterr().out
    assert eval_main([str(tmp_path / "nowhere")]) == 2
    assert eval_main([str(tmp_path / "run"), "--benchmarks", "nope"]) == 2
