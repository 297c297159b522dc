"""`kelvin compare`: train every arm x seed of a comparison recipe, evaluate every final model alike, write the report.

    D/comparison.json                 the resolved recipe (with the selected temperature, once chosen)
    D/selection/                      the recipe's `selection:` runs, selection.json (kelvin/experiments/selection.py)
    D/runs/<arm>/seed-<s>/            one Trainer run (config.yaml, metrics.jsonl, checkpoints/, model/, summary.json)
                         evaluation.json   the final model at every evaluation setting (experiments/final_eval.py)
                         warmup.json       the tiny base model's warm-up (recipe, weights SHA-256) it started from
    D/report.md, D/results.json, D/*.png   written by kelvin.experiments.report

With a `selection:`, its runs go first (validation split only) and the chosen temperature is set on its arm before the
comparison's runs are planned. Runs go seed by seed (every arm at seed 0, then every arm at seed 1, ...) so that an
interrupted comparison already holds complete pairs. A run with summary.json is finished and skipped; an unfinished
one resumes from its newest checkpoint (or starts afresh when it has none). A finished run whose config differs from
the recipe's is an error: mixing them would make the arms differ in more than the controller.
"""

from __future__ import annotations

import functools
import gc
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from kelvin.config import KelvinConfig
from kelvin.experiments.evaluation_file import RunEvaluation
from kelvin.experiments.final_eval import (
    Role,
    check_validation_split,
    evaluate_run,
    evaluation_key,
    evaluation_plan,
    evaluation_tasks,
    evaluation_units,
    write_json,
)
from kelvin.experiments.progress import ComparisonProgress, RunEvent, Stage, finished_steps
from kelvin.experiments.recipe import (
    COMPARISON_FILE,
    EVALUATION_FILE,
    TOKEN_SAMPLES_FILE,
    WARMUP_FILE,
    Arm,
    Comparison,
    EvaluationSettings,
    config_differences,
    deep_merge,
    result_tree,
    run_folder,
)
from kelvin.experiments.selection import SelectionOutcome, choose_temperature, selection_folder, selection_overrides
from kelvin.experiments.workers import run_in_processes
from kelvin.models.setup import resolve_model_path
from kelvin.rl.checkpoint import latest_checkpoint


class ComparisonError(RuntimeError):
    """A comparison folder cannot be continued as asked (the message says why and what to do)."""


@dataclass
class RunSpec:
    arm: Arm
    seed: int
    config: KelvinConfig
    folder: Path
    role: Role = "comparison"

    @property
    def label(self) -> str:
        return f"{self.arm.name} seed {self.seed}" + (" (selection)" if self.role == "selection" else "")


@dataclass
class ComparisonOutcome:
    output_dir: Path
    trained: list[tuple[str, int]] = field(default_factory=list)  # runs trained (or resumed) by this call
    skipped: list[tuple[str, int]] = field(default_factory=list)  # runs already finished
    evaluated: list[tuple[str, int]] = field(default_factory=list)  # runs evaluated by this call
    selection: SelectionOutcome | None = None
    report: Any = None  # kelvin.experiments.report.ComparisonReport
    seconds: float = 0.0


def plan_runs(comparison: Comparison, output_dir: str | Path) -> list[RunSpec]:
    """Every arm x seed, seed-major, with its config and folder."""
    return [
        RunSpec(arm, seed, comparison.config(arm, seed), run_folder(output_dir, arm.name, seed))
        for seed in comparison.seeds
        for arm in comparison.arms
    ]


def plan_selection_runs(comparison: Comparison, output_dir: str | Path) -> list[RunSpec]:
    """The selection's arm at every candidate temperature x selection seed, seed-major (validation split only)."""
    if comparison.selection is None:
        return []
    extra = selection_overrides(comparison)
    arms = [Arm(a.name, deep_merge(a.overrides, extra), a.controller) for a in comparison.selection_arms()]
    return [
        RunSpec(arm, seed, comparison.config(arm, seed), selection_folder(output_dir, arm.name, seed), "selection")
        for seed in comparison.selection.seeds
        for arm in arms
    ]


def is_finished(folder: Path) -> bool:
    return (folder / "summary.json").is_file() and (folder / "model" / "config.json").is_file()


def check_run_config(spec: RunSpec) -> None:
    """Raise when a run folder holds a run trained with settings other than the recipe's."""
    saved = spec.folder / "config.yaml"
    if not saved.is_file():
        return
    found = result_tree(yaml.safe_load(saved.read_text()) or {})
    differences = config_differences(result_tree(spec.config), found)
    if differences:
        shown = "; ".join(differences[:5]) + (" ..." if len(differences) > 5 else "")
        raise ComparisonError(
            f"{spec.folder} was trained with other settings than the recipe now gives {spec.label} ({shown}). "
            "Use a new --output-dir, or delete that run folder to retrain it."
        )


# --------------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------------


def train_run(spec: RunSpec, on_step: Callable[[dict[str, float]], None] | None = None) -> None:
    """Train (or resume) one run in its folder with kelvin.rl.trainer.Trainer."""
    from kelvin.rl.trainer import Trainer

    fresh = latest_checkpoint(spec.folder / "checkpoints") is None
    if spec.folder.exists() and fresh:
        shutil.rmtree(spec.folder)  # killed before its first checkpoint: logs would repeat steps, start afresh
    for stale in (EVALUATION_FILE, TOKEN_SAMPLES_FILE):  # an evaluation of an earlier model of this run
        (spec.folder / stale).unlink(missing_ok=True)
    trainer = Trainer(spec.config, spec.folder, quiet=True)  # builds the warmed-up tiny model if not cached yet
    warmup = resolve_model_path(spec.config, quiet=True) / WARMUP_FILE
    if fresh and warmup.is_file():  # a resumed run started from the base it recorded then, maybe on another machine
        spec.folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(warmup, spec.folder / WARMUP_FILE)
    try:
        trainer.train(resume=True, progress=False, on_step=on_step)
    finally:
        del trainer
        gc.collect()


# --------------------------------------------------------------------------------------------------------------------
# The whole comparison
# --------------------------------------------------------------------------------------------------------------------


def write_comparison_file(comparison: Comparison, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / COMPARISON_FILE, comparison.to_dict())


def check_before_work(comparison: Comparison) -> None:
    """Checks that need the task built, done before any run trains: choosing on a validation split needs one."""
    settings = comparison.evaluation
    if not (settings.wants_tuned or comparison.selection is not None):
        return
    why = "selection:" if comparison.selection is not None else f"evaluation.primary={settings.primary!r}"
    if settings.wants_tuned and comparison.selection is None:
        why = "the 'tuned' endpoint"
    config = comparison.config(comparison.arms[0], comparison.seeds[0])
    try:
        check_validation_split(evaluation_tasks(config, settings), why)
    except ValueError as err:
        raise ComparisonError(str(err)) from None


def run_comparison(
    comparison: Comparison, output_dir: str | Path, progress: bool = True, quiet: bool = False, jobs: int = 1
) -> ComparisonOutcome:
    """Run the selection (if any), then train and evaluate every arm x seed (skipping finished work), then write the
    report.

    `jobs` > 1 runs that many (arm, seed) runs at once, each in its own process. Runs are independent and seeded, so
    the results are the same as one at a time; on a 2-core machine two single-threaded runs at once take about half
    the wall time of one after the other (`trainer.torch_threads=1`, as the demo recipe sets)."""
    from kelvin.experiments.report import write_comparison_report

    if jobs < 1:
        raise ComparisonError(f"--jobs={jobs} must be >= 1 (the number of runs trained at once).")
    started = time.perf_counter()
    output = Path(output_dir)
    check_before_work(comparison)
    outcome = ComparisonOutcome(output_dir=output)
    show = dict(
        settings=comparison.evaluation, jobs=jobs, progress=progress and not quiet, announce=not progress and not quiet
    )
    if comparison.selection is not None:
        selection_runs = plan_selection_runs(comparison, output)
        for spec in selection_runs:
            check_run_config(spec)
        write_comparison_file(comparison, output)
        _run_all(selection_runs, outcome, "selection", **show)
        outcome.selection = choose_temperature(comparison, output)
        comparison = comparison.with_selected_temperature(outcome.selection.chosen_temperature)
    runs = plan_runs(comparison, output)
    for spec in runs:
        check_run_config(spec)
    write_comparison_file(comparison, output)
    _run_all(runs, outcome, "comparison", **show)
    outcome.report = write_comparison_report(output)
    outcome.seconds = time.perf_counter() - started
    return outcome


def _run_all(
    runs: list[RunSpec],
    outcome: ComparisonOutcome,
    phase: str,
    settings: EvaluationSettings,
    jobs: int,
    progress: bool,
    announce: bool,
) -> None:
    """Train and evaluate `runs` (one phase of the comparison), `jobs` at a time, showing progress."""
    work = [_work_left(spec, settings) for spec in runs]
    with ComparisonProgress(runs, work, phase, bar=progress, announce=announce) as display:
        if jobs <= 1:
            results = [_train_and_evaluate(runs, settings, False, i, display.show) for i in range(len(runs))]
        else:
            work = functools.partial(_train_and_evaluate, runs, settings, True)
            results = run_in_processes(work, len(runs), jobs, display.show)
    for spec, (trained, evaluated) in zip(runs, results, strict=True):
        key = (spec.arm.name, spec.seed)
        (outcome.trained if trained else outcome.skipped).append(key)
        if evaluated:
            outcome.evaluated.append(key)


def _train_and_evaluate(
    runs: list[RunSpec], settings: EvaluationSettings, in_worker: bool, index: int, send: Callable[[RunEvent], None]
) -> tuple[bool, bool]:
    """Run `index`: train it unless finished, then evaluate its final model unless that evaluation is current.
    Returns (trained, evaluated) by this call."""
    spec = runs[index]
    if in_worker:  # one thread per run: the runs share the cores
        torch.set_num_threads(spec.config.trainer.torch_threads or 1)
    trained = not is_finished(spec.folder)
    if trained:
        send(RunEvent.of(index, Stage.TRAINING))
        train_run(spec, on_step=lambda metrics: send(RunEvent.of(index, Stage.STEP, metrics)))
        send(RunEvent.of(index, Stage.TRAINED))
    else:
        send(RunEvent.of(index, Stage.SKIPPED))
    send(RunEvent.of(index, Stage.EVALUATING))
    before = _mtime(spec.folder / EVALUATION_FILE)
    evaluate_run(spec.folder, spec.config, spec.arm.name, spec.arm.controller, spec.seed, settings, spec.role)
    send(RunEvent.of(index, Stage.EVALUATED))
    return trained, _mtime(spec.folder / EVALUATION_FILE) != before


def _work_left(spec: RunSpec, settings: EvaluationSettings) -> tuple[int, int]:
    """(training steps, evaluation units) this run still needs, for the progress bar."""
    steps = 0 if is_finished(spec.folder) else spec.config.trainer.steps - finished_steps(spec.folder)
    units = (
        0
        if evaluation_is_current(spec, settings)
        else evaluation_units(spec.config, settings, spec.arm.controller, spec.role)
    )
    return steps, units


def evaluation_is_current(spec: RunSpec, settings: EvaluationSettings) -> bool:
    """Whether the run's evaluation.json was made with these settings (so it is reused)."""
    evaluation = RunEvaluation.read(spec.folder / EVALUATION_FILE)
    plan = evaluation_plan(settings, spec.arm.controller, spec.role)
    return evaluation is not None and evaluation.settings == evaluation_key(settings, plan)


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime_ns if path.is_file() else None
