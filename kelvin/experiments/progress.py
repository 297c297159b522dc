"""What a comparison shows while it runs: typed events from each run (in this process or a worker's), drawn as one rich
progress bar over the work left, or printed as one line per finished run."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kelvin.rl.checkpoint import latest_checkpoint

if TYPE_CHECKING:
    from kelvin.experiments.runner import RunSpec


class Stage(enum.Enum):
    """Where a run is."""

    SKIPPED = "skipped"  # trained by an earlier call
    TRAINING = "training"
    STEP = "step"  # one training step done (metrics hold step, reward, temperature/mean)
    TRAINED = "trained"
    EVALUATING = "evaluating"
    EVALUATED = "evaluated"


SHOWN_METRICS = ("step", "reward", "temperature/mean")


@dataclass(frozen=True)
class RunEvent:
    """One run (its index in the plan) reached a stage. Picklable: workers send these to the parent."""

    index: int
    stage: Stage
    metrics: dict[str, float] = field(default_factory=dict)

    @staticmethod
    def of(index: int, stage: Stage, metrics: dict[str, Any] | None = None) -> RunEvent:
        return RunEvent(index, stage, {k: float(v) for k, v in (metrics or {}).items() if k in SHOWN_METRICS})


class ComparisonProgress:
    """One rich progress bar over the work left in one phase of a comparison (training steps, plus evaluation in step
    units) with its ETA; work finished by an earlier call is left out, so it does not inflate the speed. With the bar
    off and `announce` on, one line per trained run instead."""

    def __init__(self, runs: list[RunSpec], work: list[tuple[int, int]], phase: str, bar: bool, announce: bool) -> None:
        """`work[i]`: (training steps left, evaluation units left) of run i."""
        self.runs, self.phase, self.bar, self.announce = runs, phase, bar, announce
        self.eval_units = [units for _, units in work]
        self.total = max(sum(steps + units for steps, units in work), 1)
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> ComparisonProgress:
        if not self.bar:
            return self
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("units"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
        )
        self.progress.__enter__()
        self.task = self.progress.add_task(self.phase, total=self.total, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def show(self, event: RunEvent) -> None:
        spec = self.runs[event.index]
        if event.stage is Stage.TRAINED and self.announce:
            print(f"trained {spec.label} in {spec.folder}", flush=True)
        if self.progress is None:
            return
        steps = spec.config.trainer.steps
        info, advance = "", 0
        if event.stage is Stage.SKIPPED:
            what = "(trained earlier)"
        elif event.stage is Stage.TRAINING:
            what = f"training step {finished_steps(spec.folder)}/{steps}"
        elif event.stage is Stage.STEP:
            m = event.metrics
            what = f"training step {int(m.get('step', 0))}/{steps}"
            info = f"reward {m.get('reward', float('nan')):.3f}  T {m.get('temperature/mean', float('nan')):.2f}"
            advance = 1
        elif event.stage is Stage.EVALUATED:
            what, advance = "evaluated", self.eval_units[event.index]
        else:
            what = event.stage.value
        self.progress.update(
            self.task,
            description=f"{self.phase} run {event.index + 1}/{len(self.runs)}: {spec.arm.name} seed {spec.seed} {what}",
            info=info,
            advance=advance,
        )


def finished_steps(folder: Path) -> int:
    """Steps already done by an unfinished run (its newest checkpoint), for the progress bar."""
    path = latest_checkpoint(folder / "checkpoints") if folder.exists() else None
    if path is None:
        return 0
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0
