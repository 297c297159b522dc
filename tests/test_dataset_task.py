"""task.name=dataset: any file read with `datasets`, bad rows skipped and counted, columns reach reward functions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kelvin.config import ConfigError, load_config
from kelvin.tasks import build_task
from kelvin.tasks.base import Example
from kelvin.tasks.dataset import DatasetSpec, dataset_task, gold_answer, read_rows
from kelvin.tasks.prompts import render_prompt
from tests.run_settings import TWO_STEP_RUN

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "additions.jsonl"


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_gold_answers_from_numbers_boxed_solutions_and_gsm8k_text() -> None:
    assert gold_answer(27.0) == "27"
    assert gold_answer(0.5) == "0.5"
    assert gold_answer("So the answer is $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert gold_answer("She pays 3 * 400 = 1,200.\n#### 1,200") == "1200"
    assert gold_answer("  42 ") == "42"
    for unreadable in (None, "", "   ", float("nan"), True, ["1"]):
        assert gold_answer(unreadable) is None


def test_bad_rows_are_skipped_with_reasons_and_other_columns_are_kept(tmp_path: Path) -> None:
    rows = [
        {"question": "1+2=", "gold": "3", "level": 1},
        {"question": "", "gold": "4", "level": 2},  # empty prompt
        {"question": 17, "gold": "4", "level": 2},  # not text
        {"question": "5+5=", "gold": None, "level": 3},  # no answer
        {"question": [{"role": "user", "content": "2+2="}], "gold": "4", "level": 1},  # chat messages
    ]
    spec = DatasetSpec(prompt_column="question", answer_column="gold", verifier="exact", instruction="Answer:")
    load = read_rows(_write_jsonl(tmp_path / "d.jsonl", rows), spec, "train")
    assert load.rows == 5 and load.skipped == 3
    assert [r.split(":")[0] for r in load.reasons] == ["row 1", "row 2", "row 3"]
    first, chat = load.examples
    assert first.prompt == "1+2=\n\nAnswer:" and first.answer == "3"
    assert first.columns == {"gold": "3", "level": 1}  # every column but the prompt, as TRL passes them
    assert chat.prompt == [{"role": "user", "content": "2+2=\n\nAnswer:"}] and chat.answer == "4"
    # With no verifier an unreadable answer does not cost the row.
    assert read_rows(tmp_path / "d.jsonl", DatasetSpec("question", "gold", "none"), "train").skipped == 2


def test_csv_parquet_and_save_to_disk_read_the_same_rows(tmp_path: Path) -> None:
    import datasets

    table = datasets.Dataset.from_list([{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(6)])
    table.to_csv(tmp_path / "d.csv", index=False)
    table.to_parquet(tmp_path / "d.parquet")
    table.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": table, "test": table.select(range(2))}).save_to_disk(str(tmp_path / "splits"))
    spec = DatasetSpec(verifier="exact")
    for source in ("d.csv", "d.parquet", "saved", "splits"):
        load = read_rows(tmp_path / source, spec, "train")
        assert [(e.prompt, e.answer) for e in load.examples] == [(f"{i}+1=", str(i + 1)) for i in range(6)], source


def test_a_file_with_no_usable_row_names_path_columns_and_fix(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", [{"problem": "1+1=", "solution": "2"}] * 3)
    with pytest.raises(ValueError) as err:
        dataset_task(path, DatasetSpec())
    message = str(err.value)
    assert str(path) in message and "['problem', 'solution']" in message and "task.prompt_column" in message
    (tmp_path / "d.txt").write_text("1+1=")
    with pytest.raises(ValueError, match="unknown data format"):
        dataset_task(tmp_path / "d.txt", DatasetSpec())


def test_held_out_rows_are_never_trained_on_and_capped_by_eval_size() -> None:
    task = dataset_task(EXAMPLE, DatasetSpec(verifier="exact"), test_size=0.25, seed=3, eval_size=None)
    assert len(task.test) == 12  # 48 rows x 0.25
    test_prompts = {e.prompt for e in task.test}
    train_prompts = {task.train(i).prompt for i in range(36)}
    assert len(train_prompts) == 36 and not train_prompts & test_prompts
    assert len(dataset_task(EXAMPLE, DatasetSpec(), test_size=5, eval_size=3).test) == 3


def test_verifiers(tmp_path: Path) -> None:
    example = Example("x", "1/2 of 3?", "\\frac{3}{2}")
    exact = dataset_task(EXAMPLE, DatasetSpec(verifier="exact")).verify
    math = dataset_task(EXAMPLE, DatasetSpec(verifier="math")).verify
    assert math("so \\boxed{1.5}", example) and not exact("so \\boxed{1.5}", example)
    assert exact("so \\boxed{\\frac{3}{2}}", example)
    assert not exact("so \\boxed{2}", example) and not math("so \\boxed{2}", example)


def test_config_checks_and_chat_prompts_need_a_template(tokenizer) -> None:
    with pytest.raises(ConfigError, match=r"task\.path"):
        load_config(None, ["task.name=dataset"])
    with pytest.raises(ConfigError, match=r"reward\.functions"):
        load_config(None, ["task.name=dataset", "task.path=x.jsonl", "task.verifier=none"])
    with pytest.raises(ConfigError, match=r"task\.test_size"):
        load_config(None, ["task.name=dataset", "task.path=x.jsonl", "task.test_size=0"])
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(tokenizer, [{"role": "user", "content": "1+1="}])


def test_training_on_the_example_file_passes_columns_to_reward_functions(tmp_path: Path) -> None:
    from kelvin.rl.trainer import Trainer

    rewards = tmp_path / "seen.py"
    log = tmp_path / "seen.jsonl"
    rewards.write_text(
        "import json\n"
        "def digits_seen(completions, digits, answer, **kwargs):\n"
        f"    with open({str(log)!r}, 'a') as f:\n"
        "        f.write(json.dumps({'digits': digits, 'answer': answer}) + '\\n')\n"
        "    return [0.0 for _ in completions]\n"
    )
    bad = _write_jsonl(tmp_path / "train.jsonl", [*map(json.loads, EXAMPLE.read_text().splitlines()), {"prompt": ""}])
    config = load_config(
        None,
        [
            *TWO_STEP_RUN,
            "task.name=dataset",
            f"task.path={bad}",
            "task.verifier=exact",
            f"reward.functions=[{rewards}:digits_seen]",
            "trainer.tensorboard=false",
        ],
    )
    assert build_task(config).skipped_rows == 1
    summary = Trainer(config, tmp_path / "run", quiet=True).train(progress=False)
    assert summary["skipped_rows"] == 1
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["data/skipped_rows"] == 1
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    # Two training steps of 4 prompts x 4 generations (evaluations before and after call them on the held-out rows).
    assert [len(c["digits"]) for c in calls].count(16) == 2
    source = {json.loads(line)["answer"]: json.loads(line)["digits"] for line in EXAMPLE.read_text().splitlines()}
    assert all(source[a] == d for c in calls for a, d in zip(c["answer"], c["digits"]))


PAPERS = REPO / "recipes" / "papers"


def test_paper_recipes_train_on_the_papers_data_or_fall_back_to_gsm8k_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import datasets

    from kelvin.experiments.recipe import load_comparison

    monkeypatch.chdir(tmp_path)  # the recipes' task.path is relative: data/open-s1.parquet, data/math-train.parquet
    overrides = [f"model.path={tmp_path}"]
    tampo = load_comparison(PAPERS / "tampo-table1.yaml", overrides)
    intro = load_comparison(PAPERS / "introllm-math.yaml", overrides)
    with caplog.at_level("WARNING", logger="kelvin.config"):
        assert tampo.config(tampo.arms[0], 0).task.name == "gsm8k"
        assert intro.config(intro.arms[0], 0).task.name == "gsm8k"
    assert "task.path=data/open-s1.parquet does not exist: training on gsm8k" in caplog.text
    assert "task.path=data/math-train.parquet does not exist" in caplog.text

    # With the files in place (the real columns of open-s1 and MATH-lighteval), the dataset task reads them.
    (tmp_path / "data").mkdir()
    message = [{"role": "user", "content": "What is 2+3?"}]
    open_s1 = {
        "problem": "What is 2+3?",
        "solution": "2+3 = \\boxed{5}",
        "answer": "5",
        "source": "s1",
        "messages": message,
    }
    datasets.Dataset.from_list([open_s1] * 3).to_parquet("data/open-s1.parquet")
    math = {
        "problem": "Simplify 6/4.",
        "level": "Level 1",
        "solution": "It is $\\boxed{\\frac{3}{2}}$.",
        "type": "Algebra",
    }
    datasets.Dataset.from_list([math] * 3).to_parquet("data/math-train.parquet")
    for comparison, gold, problem in ((tampo, "5", "What is 2+3?"), (intro, "\\frac{3}{2}", "Simplify 6/4.")):
        config = comparison.config(comparison.arms[0], 0)
        assert config.task.name == "dataset"
        example = build_task(config).train(0)
        assert example.answer == gold
        assert (
            example.prompt == f"{problem}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
        )


def test_chat_message_prompts_go_through_the_chat_template(tokenizer) -> None:
    import copy

    chat = copy.deepcopy(tokenizer)
    chat.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2="}]
    assert render_prompt(chat, messages) == ("[system]Be brief.[user]2+2=[assistant]", False)
    # A configured system prompt is added only when the conversation has none.
    assert render_prompt(chat, messages[1:], system_prompt="Hi.") == ("[system]Hi.[user]2+2=[assistant]", False)
    assert render_prompt(chat, messages, system_prompt="Hi.")[0].startswith("[system]Be brief.")
