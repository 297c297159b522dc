"""task.eval_split (issue 11): choosing the fixed temperature on validation problems never looks at the test set."""

from __future__ import annotations

import pytest

from kelvin.config import ConfigError, load_config
from kelvin.tasks import build_task


def test_validation_problems_are_disjoint_from_test_and_training():
    test = build_task(load_config(None, ["task.eval_size=200"]))
    validation = build_task(load_config(None, ["task.eval_size=200", "task.eval_split=validation"]))
    prompts = {split: [e.prompt for e in task.test] for split, task in (("test", test), ("validation", validation))}
    assert len(prompts["validation"]) == 200
    # independent random streams: 1-4 digit sums rarely collide; identical lists would mean the same stream
    assert len(set(prompts["validation"]) & set(prompts["test"])) < 10
    assert [test.train(i).prompt for i in range(50)] == [validation.train(i).prompt for i in range(50)]  # same data
    a, b = validation.test[0].columns["a"], validation.test[0].columns["b"]
    assert validation.test[0].answer == str(a + b)


def test_validation_split_is_refused_for_tasks_without_one():
    with pytest.raises(ConfigError, match=r"task.eval_split='validation' is only offered by the arithmetic task"):
        load_config(None, ["task.name=gsm8k", "task.eval_split=validation"])
