"""The rollout-engine seam: the trainer samples only through its engine and tells it about every optimizer step."""

from __future__ import annotations

from pathlib import Path

import torch

from kelvin.config import load_config
from kelvin.controllers import CONTROLLERS
from kelvin.controllers.base import TemperatureController
from kelvin.rl.engine import KelvinEngine, RolloutEngine
from kelvin.rl.rollouts import Rollouts
from kelvin.rl.trainer import Trainer


class RecordingEngine:
    """A second engine: delegates to Kelvin's sampler and records what the trainer asked of it."""

    name = "recording"

    def __init__(self, inner: KelvinEngine) -> None:
        self.inner, self.batches, self.updates = inner, [], 0

    def check_controller(self, controller: TemperatureController) -> None:
        self.inner.check_controller(controller)

    def generate(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        controller: TemperatureController,
        step: int,
        generator: torch.Generator,
        initial_temperature: float,
    ) -> Rollouts:
        rollouts = self.inner.generate(prompt_ids, prompt_mask, controller, step, generator, initial_temperature)
        self.batches.append((step, rollouts.batch_size))
        return rollouts

    def policy_updated(self) -> None:
        self.updates += 1


def test_the_trainer_samples_through_its_engine(tmp_path: Path, warm_model_dir: Path) -> None:
    config = load_config(
        None,
        [
            "trainer.steps=2",
            "trainer.prompts_per_step=4",
            "sampling.num_generations=4",
            "trainer.micro_batch_size=8",
            "sampling.max_completion_length=12",
            "task.eval_size=4",
            "trainer.tensorboard=false",
            "loss.num_iterations=2",
        ],
    )
    trainer = Trainer(config, tmp_path, quiet=True)
    assert isinstance(trainer.engine, KelvinEngine)
    engine = RecordingEngine(trainer.engine)
    recording: RolloutEngine = engine  # satisfies the protocol (checked by type checkers; used here as one)
    trainer.engine = recording
    trainer.train(progress=False)
    assert engine.batches == [(0, 16), (1, 16)]  # one rollout batch per step, prompts x num_generations rows
    assert engine.updates == 4  # one optimizer step per pass: 2 steps x num_iterations=2


def test_batch_level_controllers_are_the_ones_a_one_temperature_engine_can_serve() -> None:
    batch_level = {name for name, spec in CONTROLLERS.items() if spec.controller.batch_level}
    assert batch_level == {"fixed", "schedule", "entropy_target", "tampo"}
