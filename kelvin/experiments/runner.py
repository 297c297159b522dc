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

import contextlib
import gc
import os
import queue
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
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
from kelvin.models.setup import resolve_model_path
from kelvin.processes import die_with_parent
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
    display = _ComparisonProgress(runs, settings, phase, enabled=progress)
    with display:
        if jobs <= 1:
            for spec in runs:
                events = _DirectEvents(display, spec, announce)
                _record(outcome, spec, _train_and_evaluate(spec, settings, events))
        else:
            _run_in_processes(runs, settings, jobs, display, outcome, announce)


@dataclass
class _RunResult:
    trained: bool
    evaluated: bool


def _record(outcome: ComparisonOutcome, spec: RunSpec, result: _RunResult) -> None:
    key = (spec.arm.name, spec.seed)
    (outcome.trained if result.trained else outcome.skipped).append(key)
    if result.evaluated:
        outcome.evaluated.append(key)


class _DirectEvents:
    """Progress events of a run trained in this process, straight to the display."""

    def __init__(self, display: _ComparisonProgress, spec: RunSpec, announce: bool) -> None:
        self.display, self.spec, self.announce = display, spec, announce

    def __call__(self, kind: str, metrics: dict[str, float] | None = None) -> None:
        _show_event(self.display, self.spec, kind, metrics, self.announce)


class _QueuedEvents:
    """Progress events of a run trained in a worker process, sent to the parent through a queue."""

    def __init__(self, events: Any, index: int) -> None:
        self.events, self.index = events, index

    def __call__(self, kind: str, metrics: dict[str, float] | None = None) -> None:
        shown = {k: float(v) for k, v in (metrics or {}).items() if k in _SHOWN_METRICS}
        self.events.put((self.index, kind, shown))


_SHOWN_METRICS = ("step", "reward", "temperature/mean")


def _show_event(
    display: _ComparisonProgress, spec: RunSpec, kind: str, metrics: dict[str, float] | None, announce: bool
) -> None:
    if kind == "skip":
        display.skip_training(spec)
    elif kind == "train":
        display.start_training(spec)
    elif kind == "step":
        display.step(spec, metrics or {})
    elif kind == "trained" and announce:
        print(f"trained {spec.label} in {spec.folder}", flush=True)
    elif kind == "evaluate":
        display.start_evaluation(spec)
    elif kind == "evaluated":
        display.finish_evaluation(spec)


def _train_and_evaluate(
    spec: RunSpec, settings: EvaluationSettings, events: Callable[..., None], threads: int = 0
) -> _RunResult:
    """One run: train it unless finished, then evaluate its final model unless that evaluation is current."""
    if threads:
        torch.set_num_threads(threads)
    trained = not is_finished(spec.folder)
    if trained:
        events("train")
        train_run(spec, on_step=lambda metrics: events("step", metrics))
        events("trained")
    else:
        events("skip")
    events("evaluate")
    before = _mtime(spec.folder / EVALUATION_FILE)
    evaluate_run(spec.folder, spec.config, spec.arm.name, spec.arm.controller, spec.seed, settings, spec.role)
    events("evaluated")
    return _RunResult(trained=trained, evaluated=_mtime(spec.folder / EVALUATION_FILE) != before)


def _run_in_worker(spec: RunSpec, settings: EvaluationSettings, events: Any, index: int) -> _RunResult:
    threads = spec.config.trainer.torch_threads or 1  # one thread per run: the runs share the cores
    return _train_and_evaluate(spec, settings, _QueuedEvents(events, index), threads=threads)


def _run_in_processes(
    runs: list[RunSpec],
    settings: EvaluationSettings,
    jobs: int,
    display: _ComparisonProgress,
    outcome: ComparisonOutcome,
    announce: bool,
) -> None:
    """`jobs` runs at a time in spawned worker processes (fork is unsafe once torch has started its thread pools);
    the parent only draws the progress bar from the workers' events and records the outcomes in run order.

    The workers and the event queue's manager process die with this process, however it ends (a killed comparison
    once left its runs training and writing into run folders that the rerun was resuming), and SIGTERM here stops
    them at once instead of waiting for the runs in flight to finish."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing.managers import SyncManager

    context = multiprocessing.get_context("spawn")
    # Both die with the thread that starts them (see die_with_parent), which is this one: CPython's pool starts its
    # spawn workers in submit() (it starts more from its own thread only to replace those that exit under
    # max_tasks_per_child, unused here). This thread outlives them.
    parent = os.getpid()
    manager = SyncManager(ctx=context)
    manager.start(die_with_parent, (parent,))
    pool = ProcessPoolExecutor(jobs, mp_context=context, initializer=die_with_parent, initargs=(parent,))
    futures: dict[Any, int] = {}
    results: dict[int, _RunResult] = {}
    with manager, pool, _sigterm_raises():
        try:
            events = manager.Queue()
            futures = {pool.submit(_run_in_worker, spec, settings, events, i): i for i, spec in enumerate(runs)}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(events, runs, display, announce)
                for future in done:
                    results[futures[future]] = future.result()  # a worker's error stops the comparison here
            _drain(events, runs, display, announce)
        except BaseException as err:
            for future in futures:
                future.cancel()  # those not started yet
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                _kill_workers(pool)  # leaving the pool's `with` would otherwise wait for the runs in flight
            raise
    for i, spec in enumerate(runs):
        _record(outcome, spec, results[i])


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises SystemExit(143) here, so the comparison stops its workers and closes the progress bar (which
    hides the cursor) on the way out. Only the main thread can set signal handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python


def _kill_workers(pool: Any) -> None:
    # Python 3.14 has ProcessPoolExecutor.kill_workers(); before it the processes are only in the private _processes.
    kill = getattr(pool, "kill_workers", None)
    if kill is not None:
        kill()
        return
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.kill()


def _drain(events: Any, runs: list[RunSpec], display: _ComparisonProgress, announce: bool) -> None:
    while True:
        try:
            index, kind, metrics = events.get_nowait()
        except queue.Empty:
            return
        _show_event(display, runs[index], kind, metrics, announce)


def evaluation_is_current(spec: RunSpec, settings: EvaluationSettings) -> bool:
    """Whether the run's evaluation.json was made with these settings (so it is reused)."""
    evaluation = RunEvaluation.read(spec.folder / EVALUATION_FILE)
    plan = evaluation_plan(settings, spec.arm.controller, spec.role)
    return evaluation is not None and evaluation.settings == evaluation_key(settings, plan)


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime_ns if path.is_file() else None


class _ComparisonProgress:
    """One rich progress bar over the work left in the comparison (training steps, plus evaluation in step units)
    with its ETA. Work finished by an earlier call is left out of the bar, so it does not inflate the speed."""

    def __init__(self, runs: list[RunSpec], settings: EvaluationSettings, phase: str, enabled: bool) -> None:
        self.enabled = enabled
        self.runs = runs
        self.phase = phase
        self.run_index = {id(s): i + 1 for i, s in enumerate(runs)}
        self.eval_units: dict[int, int] = {}
        total = 0
        for spec in runs:
            if not is_finished(spec.folder):
                total += spec.config.trainer.steps - _finished_steps(spec.folder)
            if not evaluation_is_current(spec, settings):
                self.eval_units[id(spec)] = evaluation_units(spec.config, settings, spec.arm.controller, spec.role)
                total += self.eval_units[id(spec)]
        self.total = max(total, 1)
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self) -> _ComparisonProgress:
        if not self.enabled:
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

    def _describe(self, spec: RunSpec, what: str, info: str = "", advance: int = 0) -> None:
        if self.progress is None:
            return
        index = self.run_index[id(spec)]
        self.progress.update(
            self.task,
            description=f"{self.phase} run {index}/{len(self.runs)}: {spec.arm.name} seed {spec.seed} {what}",
            info=info,
            advance=advance,
        )

    def skip_training(self, spec: RunSpec) -> None:
        self._describe(spec, "(trained earlier)")

    def start_training(self, spec: RunSpec) -> None:
        self._describe(spec, f"training step {_finished_steps(spec.folder)}/{spec.config.trainer.steps}")

    def step(self, spec: RunSpec, metrics: dict[str, float]) -> None:
        step = int(metrics.get("step", 0))
        info = (
            f"reward {metrics.get('reward', float('nan')):.3f}  T {metrics.get('temperature/mean', float('nan')):.2f}"
        )
        self._describe(spec, f"training step {step}/{spec.config.trainer.steps}", info, advance=1)

    def start_evaluation(self, spec: RunSpec) -> None:
        self._describe(spec, "evaluating")

    def finish_evaluation(self, spec: RunSpec) -> None:
        self._describe(spec, "evaluated", advance=self.eval_units.get(id(spec), 0))


def _finished_steps(folder: Path) -> int:
    """Steps already done by an unfinished run (its newest checkpoint), for the progress bar."""
    path = latest_checkpoint(folder / "checkpoints") if folder.exists() else None
    if path is None:
        return 0
    try:
        return int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0
