"""A controller added from outside Kelvin: one class + one config section + one register call, nothing else.

The toy below (under 60 lines) is registered from this test and goes through everything the loop needs from a
controller: config (allowed name, its own section, its own validation, --explain), training with its scoring hook
and update, sampling at its temperature, checkpoint and exact resume, saving its learned part beside the model, and
evaluation / generation with the temperature it learned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from torch import Tensor

from kelvin.config import ConfigError, ControllerSection, SamplingConfig, doc, explain, load_config
from kelvin.controllers import load_learned_controller, register_controller, unregister_controller
from kelvin.controllers.base import Scores, TemperatureController, TokenContext, TokenTemperature, constant
from kelvin.rl.rollouts import Rollouts


# ---- the toy controller: its own file in real life ------------------------------------------------------------------
@dataclass
class ToyConfig(ControllerSection):
    start: float = doc(0.9, "Toy: the first batch temperature.")
    step_size: float = doc(0.05, "Toy: how much the temperature rises after every update.")

    def validate(self, sampling: SamplingConfig) -> None:
        if not self.start > 0:
            raise ConfigError(f"controller.toy.start={self.start} must be > 0; e.g. 0.9.")


class ToyController(TemperatureController):
    """Batch temperature start + step_size x updates; records the rows it scored."""

    name = "toy"
    learned_temperature = True

    def __init__(self, cfg: ToyConfig) -> None:
        cfg.validate(SamplingConfig())
        self.cfg, self.temperature, self.updates, self.scored_rows = cfg, cfg.start, 0, 0

    def batch_temperature(self) -> float:
        return self.temperature

    def token_temperature(self, ctx: TokenContext) -> TokenTemperature:
        return constant(self.temperature, ctx)

    def score_micro_batch(self, logits: Tensor, hidden: Tensor | None, micro: Rollouts) -> dict[str, Tensor]:
        return {"max_logit": logits.amax(dim=(1, 2))}  # [b]

    def update(self, rollouts: Rollouts, advantages: Tensor, scores: Scores) -> dict[str, float]:
        self.scored_rows = int(scores.rows["max_logit"].shape[0])
        self.updates += 1
        self.temperature = self.cfg.start + self.cfg.step_size * self.updates
        return {"toy/scored_rows": float(self.scored_rows)}

    def metrics(self) -> dict[str, float]:
        return {"toy/temperature": self.temperature, "toy/updates": float(self.updates)}

    def state_dict(self) -> dict[str, float]:
        return {"temperature": self.temperature, "updates": self.updates}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.temperature, self.updates = float(state["temperature"]), int(state["updates"])

    def save_pretrained(self, folder: str | Path) -> None:
        (Path(folder) / "toy.json").write_text(json.dumps({"temperature": self.temperature}))

    @classmethod
    def load_pretrained(cls, folder: str | Path, seed: int | None = None) -> ToyController | None:
        path = Path(folder) / "toy.json"
        if not path.is_file():
            return None
        return cls(ToyConfig(start=json.loads(path.read_text())["temperature"]))


# ---- the test --------------------------------------------------------------------------------------------------
OVERRIDES = [
    "controller.name=toy",
    "controller.toy.start=0.8",
    "controller.toy.step_size=0.1",
    "trainer.prompts_per_step=4",
    "sampling.num_generations=4",
    "trainer.micro_batch_size=8",
    "sampling.max_completion_length=16",
    "task.eval_size=8",
    "trainer.save_every=1",
    "trainer.tensorboard=false",
    "trainer.log_completions=16",
    "optim.learning_rate=5e-4",
]


@pytest.fixture
def toy_registered():
    register_controller("toy", ToyController, ToyConfig)
    yield
    unregister_controller("toy")


def _rows(folder: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith("time/")} for r in rows}


def test_a_registered_toy_controller_trains_samples_saves_resumes_and_evaluates(
    tmp_path, warm_model_dir, toy_registered
):
    from kelvin.eval.evaluation import evaluate_task
    from kelvin.eval.generate import generate
    from kelvin.models.loading import load_pretrained
    from kelvin.rl.trainer import Trainer
    from kelvin.tasks import build_task

    # config: the name is allowed, the section parsed, validated by the toy's own check, documented
    config = load_config(None, [*OVERRIDES, "trainer.steps=3"])
    assert config.controller.toy == ToyConfig(start=0.8, step_size=0.1)
    assert any(line.startswith("controller.toy.step_size = 0.05  # Toy:") for line in explain())
    with pytest.raises(ConfigError, match=r"controller\.toy\.start=-1\.0 must be > 0"):
        load_config(None, [*OVERRIDES, "controller.toy.start=-1"])

    # trains: the update ran every step and its scoring hook saw every row of the batch
    straight = tmp_path / "straight"
    Trainer(config, straight, quiet=True).train(progress=False)
    rows = _rows(straight)
    assert [rows[s]["toy/updates"] for s in (1, 2, 3)] == [1.0, 2.0, 3.0]
    assert all(rows[s]["toy/scored_rows"] == 16.0 for s in (1, 2, 3))
    # samples: every token of step s was drawn at the toy's temperature of that step
    for line in (straight / "completions.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert set(row["temperature"]) <= {round(0.8 + 0.1 * (row["step"] - 1), 4)}
    assert rows[3]["temperature/mean"] == pytest.approx(1.0)

    # resumes: 2 steps, then a fresh trainer resumes from the step-2 checkpoint to step 3 -> the same step-3 row
    resumed = tmp_path / "resumed"
    Trainer(load_config(None, [*OVERRIDES, "trainer.steps=2"]), resumed, quiet=True).train(progress=False)
    Trainer(config, resumed, quiet=True).train(resume=True, progress=False)
    assert _rows(resumed)[3] == rows[3]

    # saves its learned part beside the model, and evaluation / generation sample with it
    model_dir = straight / "model"
    assert json.loads((model_dir / "toy.json").read_text()) == {"temperature": pytest.approx(1.1)}
    learned = load_learned_controller(model_dir)
    assert isinstance(learned, ToyController) and learned.temperature == pytest.approx(1.1)
    model, tokenizer = load_pretrained(model_dir)
    result = evaluate_task(model, tokenizer, build_task(config), controller=learned, max_new_tokens=16)
    assert result.setting == "controller:toy" and result.num_examples == 8 and result.temperature is None
    generation = generate(model_dir, ["12+34="], max_new_tokens=8)
    assert generation.learned and all(tau == pytest.approx(1.1) for tau in generation.taus[0])


def test_unregistered_name_is_refused_with_the_registered_choices(toy_registered):
    unregister_controller("toy")
    with pytest.raises(ConfigError, match=r"controller\.name='toy' is not allowed: choose one of \['fixed'"):
        load_config(None, ["controller.name=toy"])
    register_controller("toy", ToyController, ToyConfig)
    assert load_config(None, ["controller.name=toy"]).controller.name == "toy"
