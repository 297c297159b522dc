"""Everything a training run writes into its folder besides checkpoints: config.yaml, metrics.jsonl,
completions.jsonl, the trackers' output (TensorBoard events, ...), summary.json and the progress bar. Only the main
process writes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import yaml

from kelvin.config import KelvinConfig, to_dict
from kelvin.rl.run_folder import RUN_LOGS, truncate_jsonl
from kelvin.rl.step_record import StepRecord
from kelvin.rl.trackers import Trackers


class RunLog:
    def __init__(self, output_dir: Path, enabled: bool, log_completions: int = 8) -> None:
        self.output_dir = output_dir
        self.enabled = enabled  # the main process
        self.log_completions = log_completions
        self.trackers: Trackers | None = None  # trainer.report_to (kelvin/rl/trackers.py)
        self.bar: Any = None
        self._task: Any = None

    @property
    def metrics_path(self) -> Path:
        return self.output_dir / "metrics.jsonl"

    def start(self, config: KelvinConfig, tensorboard: bool) -> None:
        """Write config.yaml and open the trackers of trainer.report_to (the folder exists); `tensorboard` False
        drops TensorBoard from them."""
        if not self.enabled:
            return
        (self.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
        report_to = [name for name in config.trainer.report_to if tensorboard or name != "tensorboard"]
        self.trackers = Trackers(report_to, self.output_dir, config=to_dict(config))

    def forget_after(self, step: int) -> None:
        """Drop rows logged after `step` (a killed run may have logged steps after its last checkpoint). Only the
        writing process does it: two processes rewriting one file through one temporary name race each other."""
        if not self.enabled:
            return
        for name in RUN_LOGS:
            truncate_jsonl(self.output_dir / name, step)  # also drops a torn last line

    def metrics(self, row: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.trackers is not None:
            self.trackers.log(row)  # the same names and values, through accelerate's trackers

    def completions(self, step: int, record: StepRecord) -> None:
        """The first `log_completions` rows of the step: prompt, completion, answer, reward, advantage, taus."""
        if not self.enabled or self.log_completions <= 0:
            return
        r = record.rollouts
        with open(self.output_dir / "completions.jsonl", "a") as f:
            for i in range(min(self.log_completions, r.batch_size)):
                m = r.completion_mask[i].bool()
                row = {
                    "step": step,
                    "prompt": record.examples[i].prompt,
                    "completion": record.texts[i],
                    "answer": record.examples[i].answer,
                    "reward": float(record.rewards[i]),
                    "advantage": float(record.advantages[i]),
                    "temperature": [round(float(x), 4) for x in r.temperature[i][m]],
                }
                f.write(json.dumps(row) + "\n")

    def progress(self, enabled: bool, total: int, completed: int) -> contextlib.AbstractContextManager[Any]:
        """The progress bar's context (a no-op context when disabled or not the main process)."""
        self.bar = _progress_bar() if enabled and self.enabled else None
        if self.bar is None:
            return contextlib.nullcontext()
        self._task = self.bar.add_task("train", total=total, completed=completed, info="")
        return self.bar

    def advance(self, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            info = f"reward {metrics['reward']:.3f}  acc {metrics['accuracy']:.3f}  T {metrics['temperature/mean']:.2f}"
            self.bar.update(self._task, advance=1, info=info)

    def finish(self, summary: dict[str, Any]) -> None:
        """Close the trackers and write summary.json."""
        if self.trackers is not None:
            self.trackers.close()
        if self.enabled:
            (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))


def _progress_bar() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("step"),
        MofNCompleteColumn(),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
