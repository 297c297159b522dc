"""Step schedules of the batch temperature: linear, cosine and staged (POLARIS).

With s the 0-based training step, S = `total_steps` and progress p = min(s / (S - 1), 1) (p = 0 when S = 1):

* linear (TAMPO's heuristic baseline, arXiv 2602.11779; research/papers.md section 3.2):
  T_s = T_start + (T_end - T_start) * p, default 0.9 -> 1.5. The paper writes s / S with 1-based s; with 0-based s
  the last step reaches T_end exactly, as `controller.schedule.end` documents.
* cosine: T_s = T_end + (T_start - T_end) * (1 + cos(pi * p)) / 2 (flat at both ends).
* staged (POLARIS, Polaris blog / repo ChenxinAn-fdu/POLARIS; research/papers.md section 3.3): a constant
  temperature per stage, e.g. 1.4 -> 1.45 -> 1.5 for Qwen3-4B. POLARIS picks each stage's temperature offline by a
  diversity sweep; here the stage temperatures are given. Stage i >= 1 begins at `stage_steps[i - 1]`; with
  `stage_steps` empty the S steps are split evenly (stage i begins at floor(i * S / n)).

Every token of the step's batch is sampled at T_s. Steps beyond S keep the final temperature.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Literal

from kelvin.config import ConfigError, ControllerSection, SamplingConfig, doc
from kelvin.controllers.base import ControllerSetup, TemperatureController, TokenContext, TokenTemperature, constant


@dataclass
class ScheduleControllerConfig(ControllerSection):
    kind: Literal["linear", "cosine", "staged"] = doc(
        "linear", "Step schedule of the batch temperature. linear is TAMPO's heuristic baseline (0.9 -> 1.5)."
    )
    start: float = doc(0.9, "Temperature at step 0 (linear, cosine).")
    end: float = doc(1.5, "Temperature at the last step (linear, cosine).")
    stages: list[float] = doc([1.4, 1.45, 1.5], "staged (POLARIS): temperatures of equal-length stages.")
    stage_steps: list[int] = doc([], "staged: the steps at which each later stage begins; empty splits evenly.")

    def validate(self, sampling: SamplingConfig) -> None:
        if self.kind == "staged":
            if not self.stages or any(not t > 0 for t in self.stages):
                raise ConfigError(f"controller.schedule.stages={self.stages} needs one or more positive temperatures.")
            if self.stage_steps and len(self.stage_steps) != len(self.stages) - 1:
                raise ConfigError(
                    f"controller.schedule.stage_steps={self.stage_steps} needs len(stages) - 1 = "
                    f"{len(self.stages) - 1} entries (the first step of every stage after the first), or none."
                )
            steps = self.stage_steps
            if any(b <= a for a, b in itertools.pairwise(steps)) or any(s < 0 for s in steps):
                raise ConfigError(
                    f"controller.schedule.stage_steps={steps} must be non-negative and strictly increasing."
                )
        elif self.kind in ("linear", "cosine"):
            if not (self.start > 0 and self.end > 0):
                raise ConfigError(f"controller.schedule start={self.start}, end={self.end} must both be > 0.")
        else:
            raise ConfigError(f"controller.schedule.kind={self.kind!r} is unknown; choose linear, cosine or staged.")


def schedule_progress(step: int, total_steps: int) -> float:
    """p = min(step / (total_steps - 1), 1); 0 for a one-step run."""
    if total_steps <= 1:
        return 0.0
    return min(max(step, 0) / (total_steps - 1), 1.0)


def linear_temperature(step: int, total_steps: int, start: float, end: float) -> float:
    return start + (end - start) * schedule_progress(step, total_steps)


def cosine_temperature(step: int, total_steps: int, start: float, end: float) -> float:
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * schedule_progress(step, total_steps)))


def stage_boundaries(total_steps: int, stages: int, stage_steps: list[int]) -> list[int]:
    """The first step of every stage after the first (given, or an even split of `total_steps`)."""
    if stage_steps:
        return list(stage_steps)
    return [(i * total_steps) // stages for i in range(1, stages)]


def stage_index(step: int, boundaries: list[int]) -> int:
    return sum(1 for first in boundaries if step >= first)


class ScheduleController(TemperatureController):
    """The batch temperature follows a fixed function of the training step (no learning)."""

    name = "schedule"
    batch_level = True
    uses_total_steps = True

    @classmethod
    def from_config(cls, section: ControllerSection, setup: ControllerSetup) -> ScheduleController:
        assert isinstance(section, ScheduleControllerConfig)
        return cls(section, total_steps=setup.total_steps)

    def __init__(self, cfg: ScheduleControllerConfig, total_steps: int) -> None:
        if total_steps < 1:
            raise ValueError(f"trainer.steps={total_steps} must be >= 1 for a temperature schedule.")
        cfg.validate(SamplingConfig())
        self.config = cfg
        self.total_steps = total_steps
        self.boundaries = stage_boundaries(total_steps, len(cfg.stages), cfg.stage_steps)
        self.step = 0

    def temperature_at(self, step: int) -> float:
        c = self.config
        if c.kind == "linear":
            return linear_temperature(step, self.total_steps, c.start, c.end)
        if c.kind == "cosine":
            return cosine_temperature(step, self.total_steps, c.start, c.end)
        return float(c.stages[stage_index(step, self.boundaries)])

    def begin_step(self, step: int) -> None:
        self.step = step

    def batch_temperature(self) -> float:
        return self.temperature_at(self.step)

    def token_temperature(self, ctx: TokenContext) -> TokenTemperature:
        return constant(self.batch_temperature(), ctx)

    def metrics(self) -> dict[str, float]:
        out = {"temperature/chosen": self.batch_temperature()}
        if self.config.kind == "staged":
            out["temperature/stage"] = float(stage_index(self.step, self.boundaries))
        return out

    def state_dict(self) -> dict[str, Any]:
        # T is a pure function of the step and the config, so the step is the whole state.
        return {"step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
