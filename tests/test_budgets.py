"""Equal budgets (issue 11): the lr schedule runs over the policy updates actually taken, IntroLLM gets as many
policy updates as every other arm in a comparison, and a comparison that would not is refused."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from run_settings import TWO_STEP_RUN

from kelvin.config import ConfigError, load_config
from kelvin.experiments.recipe import load_comparison, policy_update_budget
from kelvin.rl.trainer import Trainer

SMALL = [*TWO_STEP_RUN, "trainer.tensorboard=false", "trainer.log_completions=0", "optim.learning_rate=1e-4"]
COSINE = ["optim.lr_scheduler=cosine", "optim.min_lr_ratio=0.1"]


def _rows(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()][1:]


def test_alternating_introllm_cosine_run_ends_at_its_minimum_ratio(tmp_path, warm_model_dir):
    """theta/phi blocks of 1: steps 0 and 2 update the policy, so the schedule spans 2 updates and the last one runs
    at learning_rate x min_lr_ratio (before the fix it was planned over 4 and ended near the top)."""
    options = [
        *SMALL,
        *COSINE,
        "trainer.steps=4",
        "controller.name=introspective",
        "controller.introspective.joint=false",
    ]
    Trainer(load_config(None, options), tmp_path, quiet=True).train(progress=False)
    rows = _rows(tmp_path)
    assert [r["policy_updated"] for r in rows] == [1.0, 0.0, 1.0, 0.0]
    assert [r["optimizer_steps"] for r in rows] == [1.0, 1.0, 2.0, 2.0]
    assert rows[0]["learning_rate"] == pytest.approx(1e-4, rel=1e-9)
    assert rows[-1]["learning_rate"] == pytest.approx(1e-5, rel=1e-9)


def test_joint_introllm_takes_a_policy_and_a_head_update_every_step(tmp_path, warm_model_dir):
    options = [*SMALL, *COSINE, "controller.name=introspective", "controller.introspective.joint=true"]
    trainer = Trainer(load_config(None, options), tmp_path, quiet=True)
    head_before = {k: v.clone() for k, v in trainer.controller.head.state_dict().items()}
    policy_before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.train(progress=False)
    rows = _rows(tmp_path)
    assert [r["policy_updated"] for r in rows] == [1.0, 1.0]
    assert [r["introspective/phase"] for r in rows] == [2.0, 2.0]
    assert all("introspective/loss" in r for r in rows)  # the head stepped on every step
    assert any(not v.equal(head_before[k]) for k, v in trainer.controller.head.state_dict().items())
    assert any(not v.equal(policy_before[k]) for k, v in trainer.policy.state_dict().items())
    # The first head pass reproduces the sampler's log pi_phi: the hidden states line up with the tokens.
    assert all(r["introspective/initial_ratio_max_error"] < 1e-4 for r in rows)
    assert rows[-1]["learning_rate"] == pytest.approx(1e-5, rel=1e-9)


def test_cosine_schedule_ends_at_the_minimum_ratio_with_several_iterations():
    config = load_config(None, [*SMALL, *COSINE, "trainer.steps=3", "loss.num_iterations=2"])
    from kelvin.rl.optimizer import lr_at

    total = policy_update_budget(config)
    assert total == 6
    lrs = [lr_at(config.optim, i, total) for i in range(total)]
    expected = [1e-4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / 5))) for i in range(6)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[-1] == pytest.approx(1e-5, rel=1e-12)


RECIPE = {
    "seeds": [0],
    "base": {"trainer": {"steps": 4}},
    "arms": {
        "fixed-1.0": {"controller": {"name": "fixed"}},
        "introllm": {"controller": {"name": "introspective", "introspective": {"theta_steps": 1, "phi_steps": 1}}},
    },
}


def _write(tmp_path, tree) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return str(path)


def test_comparisons_default_introllm_to_joint_updates(tmp_path):
    comparison = load_comparison(_write(tmp_path, RECIPE))
    budgets = {arm.name: policy_update_budget(comparison.config(arm, 0)) for arm in comparison.arms}
    assert budgets == {"fixed-1.0": 4, "introllm": 4}
    introllm = next(a for a in comparison.arms if a.name == "introllm")
    assert comparison.config(introllm, 0).controller.introspective.joint is True


def test_unequal_budgets_are_refused_unless_allowed(tmp_path):
    tree = yaml.safe_load(yaml.safe_dump(RECIPE))
    tree["arms"]["introllm"]["controller"]["introspective"]["joint"] = False
    with pytest.raises(ConfigError, match=r"fixed-1.0: 4, introllm: 2.*allow_unequal_budgets"):
        load_comparison(_write(tmp_path, tree))
    tree["allow_unequal_budgets"] = True
    comparison = load_comparison(_write(tmp_path, tree))
    assert comparison.allow_unequal_budgets


def test_introllm_recipe_uses_the_ead_authors_constants_and_equal_budgets(tmp_path):
    from pathlib import Path

    from kelvin.controllers.ead import ead_temperature

    recipe = Path(__file__).parent.parent / "recipes" / "papers" / "introllm-math.yaml"
    comparison = load_comparison(recipe, [f"model.path={tmp_path}"])
    configs = {a.name: comparison.config(a, 0) for a in comparison.arms}
    assert {policy_update_budget(c) for c in configs.values()} == {200}
    ead = configs["ead"].controller.ead
    # the authors' schedule (f = 25 + 5 s, exponent t / (20 f)): tau reaches 0.1 at token 371 (step 0), 15,136 (199)
    first_cold = [next(t for t in range(20000) if ead_temperature(t, s, ead) <= 0.1 + 1e-12) for s in (0, 199)]
    assert first_cold == [371, 15136]
    assert [ead_temperature(t, 0, ead) for t in (0, 9)] == [1.0, 1.0]  # 10 warm tokens
