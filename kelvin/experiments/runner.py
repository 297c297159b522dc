"""`kelvin compare`: train every arm x seed of a comparison recipe, evaluate every final model alike, write the report.

    D/comparison.json                 the resolved recipe
    D/runs/<arm>/seed-<s>/            one Trainer run (config.yaml, metrics.jsonl, checkpoints/, model/, summary.json)
                         evaluation.json   the final model at every evaluation temperature (avg@k, pass@j, counts)
                         warmup.json       the tiny base model's warm-up (recipe, weights SHA-256) it started from
    D/report.md, D/results.json, D/*.png   written by kelvin.experiments.report

Runs go seed by seed (every arm at seed 0, then every arm at seed 1, ...) so that an interrupted comparison already
holds complete pairs. A run with summary.json is finished and skipped; an unfinished one resumes from its newest
checkpoint (or starts afresh when it has none). A finished run whose config differs from the recipe's is an error:
mixing them would make the arms differ in more than the controller.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
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

from kelvin.config import KelvinConfig, to_dict
from kelvin.controllers import has_learned_temperature, load_learned_controller
from kelvin.eval.evaluation import mean_over_tasks, setting_label
from kelvin.experiments.recipe import (
    COMPARISON_FILE,
    EVALUATION_FILE,
    TOKEN_SAMPLES_FILE,
    WARMUP_FILE,
    Arm,
    Comparison,
    EvaluationSettings,
    config_differences,
    result_tree,
    run_folder,
)
from kelvin.experiments.results import RunEvaluation, SettingEvaluation, TaskEvaluation
from kelvin.models.setup import resolve_device, resolve_model_path, torch_dtype
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

    @property
    def label(self) -> str:
        return f"{self.arm.name} seed {self.seed}"


@dataclass
class ComparisonOutcome:
    output_dir: Path
    trained: list[tuple[str, int]] = field(default_factory=list)  # runs trained (or resumed) by this call
    skipped: list[tuple[str, int]] = field(default_factory=list)  # runs already finished
    evaluated: list[tuple[str, int]] = field(default_factory=list)  # runs evaluated by this call
    report: Any = None  # kelvin.experiments.report.ComparisonReport
    seconds: float = 0.0


def plan_runs(comparison: Comparison, output_dir: str | Path) -> list[RunSpec]:
    """Every arm x seed, seed-major, with its config and folder."""
    return [
        RunSpec(arm, seed, comparison.config(arm, seed), run_folder(output_dir, arm.name, seed))
        for seed in comparison.seeds
        for arm in comparison.arms
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
# Evaluation of a final model
# --------------------------------------------------------------------------------------------------------------------


def evaluation_tasks(config: KelvinConfig, settings: EvaluationSettings) -> list[Any]:
    """The tasks whose held-out sets evaluate a final model: `settings.tasks`, or the training task."""
    from kelvin.config import config_from_dict
    from kelvin.tasks import build_task

    names = settings.tasks or [config.task.name]
    tasks = []
    for name in names:
        tree = to_dict(config)
        if name != config.task.name:  # the training task's data_path belongs to it, not to the benchmarks
            tree["task"]["data_path"] = None
        tree["task"]["name"] = name
        tree["task"]["eval_size"] = settings.size or config.task.eval_size
        tasks.append(build_task(config_from_dict(tree)))
    return tasks


def _learned_controller(spec: RunSpec, settings: EvaluationSettings) -> Any:
    """The controller that picks its own temperature at inference (e.g. IntroLLM's head), or None."""
    if not settings.learned_temperature or not has_learned_temperature(spec.arm.controller):
        return None
    controller = load_learned_controller(spec.folder / "model", seed=settings.seed)
    if controller is None:
        raise FileNotFoundError(
            f"'{spec.folder / 'model'}' holds no learned temperature, but controller '{spec.arm.controller}' learns "
            "one: train the run again, or set evaluation.learned_temperature=false."
        )
    return controller


def evaluation_is_current(folder: Path, settings: EvaluationSettings) -> bool:
    """Whether the run's evaluation.json was made with these settings (so it can be reused)."""
    path = folder / EVALUATION_FILE
    if not path.is_file():
        return False
    return json.loads(path.read_text()).get("settings") == dataclasses.asdict(settings)


def evaluate_run(spec: RunSpec, settings: EvaluationSettings) -> RunEvaluation:
    """Evaluate the run's final model at every setting and write evaluation.json (reused when settings match)."""
    from kelvin.eval.evaluation import evaluate
    from kelvin.models.loading import load_pretrained

    target = spec.folder / EVALUATION_FILE
    wanted = dataclasses.asdict(settings)
    if evaluation_is_current(spec.folder, settings):
        return RunEvaluation.from_dict(json.loads(target.read_text()))
    config = spec.config
    device = resolve_device(config.trainer.device)
    model, tokenizer = load_pretrained(spec.folder / "model", dtype=torch_dtype(config.model.dtype))
    model.to(device).eval()
    controller = _learned_controller(spec, settings)
    if controller is not None:
        for module in controller.modules():
            module.to(device)
    tasks = evaluation_tasks(config, settings)
    runs: list[tuple[float | None, Any]] = [(t, None) for t in settings.temperatures]
    if controller is not None:
        runs.append((None, controller))
    results: dict[str, SettingEvaluation] = {}
    for temperature, chosen in runs:
        per_task: dict[str, TaskEvaluation] = {}
        for task in tasks:
            result = evaluate(
                model,
                tokenizer,
                task.test[: settings.size] if settings.size else task.test,
                task.verify,
                task.extract,
                k=settings.k,
                temperature=1.0 if temperature is None else temperature,
                top_p=settings.top_p,
                max_new_tokens=settings.max_completion_length or config.sampling.max_completion_length,
                controller=chosen,
                batch_size=settings.batch_size,
                seed=settings.seed,
                use_chat_template=task.use_chat_template and config.task.chat_template,
                system_prompt=config.task.system_prompt,
                max_prompt_length=config.sampling.max_prompt_length,
                timeout_s=config.reward.timeout_s,
                name=task.name,
                cache=config.sampling.cache,
            )
            per_task[task.name] = TaskEvaluation(
                metrics=result.metrics(),
                correct_counts=[sum(p.correct) for p in result.problems],
                k=result.k,
                num_examples=result.num_examples,
                mean_completion_tokens=result.mean_completion_tokens,
                truncated_fraction=result.truncated_fraction,
                verify_failures=result.verify_failures,
                verify_timeouts=result.verify_timeouts,
                seconds=result.seconds,
            )
        results[setting_label(temperature)] = SettingEvaluation(
            temperature=temperature,
            tasks=per_task,
            metrics=mean_over_tasks([entry.metrics for entry in per_task.values()]),
        )
    if controller is not None and settings.token_samples > 0:
        samples = token_samples(model, tokenizer, tasks[0], controller, config, settings)
        (spec.folder / TOKEN_SAMPLES_FILE).write_text(json.dumps(samples))
    evaluation = RunEvaluation(settings=wanted, arm=spec.arm.name, seed=spec.seed, results=results)
    _write_json(target, evaluation.to_dict())
    del model
    gc.collect()
    return evaluation


@torch.no_grad()
def token_samples(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Any,
    controller: Any,
    config: KelvinConfig,
    settings: EvaluationSettings,
    max_tokens: int = 20000,
) -> dict[str, list]:
    """tau and the policy's entropy at T=1 of every token sampled with the learned temperature on held-out prompts
    (one completion per prompt), for the tau-vs-entropy scatter of the report."""
    from kelvin.models.loading import eos_ids
    from kelvin.rl.logprobs import entropy_from_logits
    from kelvin.rl.policy_pass import completion_logits
    from kelvin.rl.sampling import SamplingSettings, sample
    from kelvin.tasks.prompts import encode_prompts

    device = next(model.parameters()).device
    examples = task.test[: settings.token_samples]
    ids, mask = encode_prompts(
        tokenizer,
        [e.prompt for e in examples],
        task.use_chat_template and config.task.chat_template,
        config.task.system_prompt,
        config.sampling.max_prompt_length,
        pad_id=int(tokenizer.pad_token_id),
    )
    sampling = SamplingSettings(
        max_new_tokens=settings.max_completion_length or config.sampling.max_completion_length,
        eos_ids=eos_ids(model, tokenizer),
        pad_id=int(tokenizer.pad_token_id),
        top_p=settings.top_p,
        cache=config.sampling.cache,
    )
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    tau0 = 1.0 if controller.initial_temperature is None else float(controller.initial_temperature)
    rollouts = sample(model, ids.to(device), mask.to(device), controller, sampling, 0, generator, tau0)
    logits, _ = completion_logits(model, rollouts)
    entropy = entropy_from_logits(logits)
    keep = rollouts.completion_mask.bool()
    taus = rollouts.temperature[keep].float().cpu().tolist()[:max_tokens]
    entropies = entropy[keep].float().cpu().tolist()[:max_tokens]
    tokens = rollouts.completion_ids[keep].cpu().tolist()[:max_tokens]
    return {
        "temperature": [round(x, 5) for x in taus],
        "entropy_at_T1": [round(x, 5) for x in entropies],
        "token": tokenizer.convert_ids_to_tokens(tokens),
    }


# --------------------------------------------------------------------------------------------------------------------
# The whole comparison
# --------------------------------------------------------------------------------------------------------------------


def evaluation_units(config: KelvinConfig, settings: EvaluationSettings, controller: str) -> int:
    """Evaluation cost in training-step units, for the ETA: sampled sequences over a rollout batch, at half a step's
    cost per batch (sampling without the backward pass). A rough guide, refined by the progress bar's own speed."""
    draws = sum(1 if t == 0 else settings.k for t in settings.temperatures)
    if settings.learned_temperature and has_learned_temperature(controller):
        draws += settings.k
    sequences = draws * (settings.size or config.task.eval_size) * max(len(settings.tasks), 1)
    return max(1, round(0.5 * sequences / config.rollout_batch_size))


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def write_comparison_file(comparison: Comparison, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    _write_json(output_dir / COMPARISON_FILE, comparison.to_dict())


def run_comparison(
    comparison: Comparison, output_dir: str | Path, progress: bool = True, quiet: bool = False, jobs: int = 1
) -> ComparisonOutcome:
    """Train and evaluate every arm x seed (skipping finished work), then write the report.

    `jobs` > 1 runs that many (arm, seed) runs at once, each in its own process. Runs are independent and seeded, so
    the results are the same as one at a time; on a 2-core machine two single-threaded runs at once take about half
    the wall time of one after the other (`trainer.torch_threads=1`, as the demo recipe sets)."""
    from kelvin.experiments.report import write_comparison_report

    if jobs < 1:
        raise ComparisonError(f"--jobs={jobs} must be >= 1 (the number of runs trained at once).")
    started = time.perf_counter()
    output = Path(output_dir)
    runs = plan_runs(comparison, output)
    for spec in runs:
        check_run_config(spec)
    write_comparison_file(comparison, output)
    outcome = ComparisonOutcome(output_dir=output)
    display = _ComparisonProgress(runs, comparison.evaluation, enabled=progress and not quiet)
    announce = not progress and not quiet
    with display:
        if jobs <= 1:
            for spec in runs:
                events = _DirectEvents(display, spec, announce)
                _record(outcome, spec, _train_and_evaluate(spec, comparison.evaluation, events))
        else:
            _run_in_processes(runs, comparison.evaluation, jobs, display, outcome, announce)
    outcome.report = write_comparison_report(output)
    outcome.seconds = time.perf_counter() - started
    return outcome


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
    evaluate_run(spec, settings)
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


def _mtime(path: Path) -> float | None:
    return path.stat().st_mtime_ns if path.is_file() else None


class _ComparisonProgress:
    """One rich progress bar over the work left in the comparison (training steps, plus evaluation in step units)
    with its ETA. Work finished by an earlier call is left out of the bar, so it does not inflate the speed."""

    def __init__(self, runs: list[RunSpec], settings: EvaluationSettings, enabled: bool) -> None:
        self.enabled = enabled
        self.runs = runs
        self.run_index = {id(s): i + 1 for i, s in enumerate(runs)}
        self.eval_units: dict[int, int] = {}
        total = 0
        for spec in runs:
            if not is_finished(spec.folder):
                total += spec.config.trainer.steps - _finished_steps(spec.folder)
            if not evaluation_is_current(spec.folder, settings):
                self.eval_units[id(spec)] = evaluation_units(spec.config, settings, spec.arm.controller)
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
        self.task = self.progress.add_task("comparison", total=self.total, info="")
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
            description=f"run {index}/{len(self.runs)}: {spec.arm.name} seed {spec.seed} {what}",
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
