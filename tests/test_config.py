"""Invalid configs fail before any work, with a message naming the field, the value and the fix."""

from __future__ import annotations

import pytest

from kelvin.config import ConfigError, KelvinConfig, explain, load_config


def test_defaults_are_valid_and_overrides_are_typed():
    config = load_config(
        None,
        [
            "trainer.steps=50",
            "sampling.temperature=0.8",
            "loss.epsilon_high=0.28",
            "controller.tampo.candidates=[0.8,1.0,1.2]",
            "trainer.tensorboard=false",
        ],
    )
    assert isinstance(config, KelvinConfig)
    assert config.trainer.steps == 50 and isinstance(config.trainer.steps, int)
    assert config.sampling.temperature == 0.8
    assert config.loss.epsilon_high == 0.28
    assert config.controller.tampo.candidates == [0.8, 1.0, 1.2]
    assert config.trainer.tensorboard is False


def test_recipe_file_and_override_precedence(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("trainer:\n  steps: 7\nsampling:\n  temperature: 0.7\n")
    config = load_config(recipe, ["sampling.temperature=1.3"])
    assert config.trainer.steps == 7 and config.sampling.temperature == 1.3


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["trainer.stepz=5"], r"Unknown config key 'trainer.stepz'.*Did you mean 'trainer.steps'"),
        (["sampling.temperatur=1"], r"Did you mean 'sampling.temperature'"),
        (["sampling.temperature=0"], r"sampling.temperature=0.0 must be in \[0.001, 100\]"),
        (["sampling.temperature=-1"], r"sampling.temperature=-1.0 must be in"),
        (["sampling.num_generations=1"], r"sampling.num_generations=1 must be >= 2"),
        (
            ["trainer.micro_batch_size=7"],
            r"trainer.micro_batch_size=7 must divide each process.*= 512.*e.g. trainer.micro_batch_size=4",
        ),
        (["model.path=/no/such/model"], r"model.path='/no/such/model' is not a folder"),
        (["loss.loss_type=ppo"], r"loss.loss_type='ppo' is not allowed: choose one of"),
        (["loss.loss_type=dapoo"], r"Did you mean 'dapo'"),
        (["trainer.steps=many"], r"trainer.steps='many' must be an integer"),
        (["sampling.top_p=1.5"], r"sampling.top_p=1.5 must be in \(0, 1\]"),
        (["sampling.batch_size=6"], r"sampling.batch_size=6 must be a multiple of sampling.num_generations=8"),
        (["reward.weights=[1,2]"], r"reward.weights has 2 entries but there are 1 rewards"),
        (["controller.name=tampo", "controller.tampo.ema_alpha=0"], r"controller.tampo.ema_alpha=0.0 must be in"),
        (["controller.name=introspective", "controller.introspective.tau0=3"], r"tau0=3.0 must lie in"),
        (["trainer=5"], r"trainer must be a mapping"),
        (["steps"], r"must look like section.field=value"),
    ],
)
def test_bad_values_name_field_value_and_fix(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, overrides)


def test_missing_recipe_is_a_clear_error():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("recipes/nope.yaml")


def test_every_field_is_documented():
    lines = explain()
    assert len(lines) > 60
    undocumented = [line for line in lines if line.endswith("#  ") or line.rstrip().endswith("#")]
    assert not undocumented, undocumented
