"""The evaluation of a comparison run's final model: evaluation.json in its run folder.

A comparison run is evaluated on the test split at every fixed temperature of the recipe (greedy first when it is
the primary endpoint) and, for arms that learn a temperature, with the learned one; when the 'tuned' endpoint is
wanted, also on the validation split at the candidate temperatures, so that each run's own best temperature is chosen
without looking at the test problems (kelvin/experiments/results.py makes that choice from the file).

A selection run (the recipe's `selection:`) is evaluated on the validation split only, at what the primary endpoint
needs: greedy, the common temperature, or the tuning candidates. It never sees the test problems.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from kelvin.config import KelvinConfig, config_from_dict, to_dict
from kelvin.controllers import has_learned_temperature, load_learned_controller
from kelvin.eval.evaluation import mean_over_tasks, setting_label
from kelvin.experiments.evaluation_file import RunEvaluation, SettingEvaluation, TaskEvaluation
from kelvin.experiments.recipe import EVALUATION_FILE, TOKEN_SAMPLES_FILE, EvaluationSettings
from kelvin.models.setup import resolve_device, torch_dtype

Role = Literal["comparison", "selection"]
LEARNED = None  # a setting of None: the controller's own learned temperature


@dataclass(frozen=True)
class EvaluationPlan:
    """The settings (a temperature, or LEARNED) a run is evaluated at, per split."""

    test: list[float | None]
    validation: list[float | None]

    def to_dict(self) -> dict[str, list[str]]:
        return {
            "test": [setting_label(t) for t in self.test],
            "validation": [setting_label(t) for t in self.validation],
        }


def evaluation_plan(settings: EvaluationSettings, controller: str, role: Role) -> EvaluationPlan:
    """What a run of `controller` is evaluated at, as a comparison run or as a selection run."""
    learned = settings.learned_temperature and has_learned_temperature(controller)
    endpoint = settings.endpoint
    if role == "selection":  # only what the primary endpoint needs, and only on validation
        if endpoint.kind == "greedy":
            return EvaluationPlan(test=[], validation=[0.0])
        if endpoint.kind == "common":
            return EvaluationPlan(test=[], validation=[endpoint.temperature])
        return EvaluationPlan(test=[], validation=list(settings.tuning_temperatures))
    test: list[float | None] = [*settings.test_temperatures, *([LEARNED] if learned else [])]
    validation: list[float | None] = []
    if settings.wants_tuned:
        validation = [*settings.tuning_temperatures, *([LEARNED] if learned else [])]
    return EvaluationPlan(test=test, validation=validation)


def evaluation_key(settings: EvaluationSettings, plan: EvaluationPlan) -> dict[str, Any]:
    """What evaluation.json records as its settings: a run's evaluation is reused only when this matches."""
    return {**dataclasses.asdict(settings), "plan": plan.to_dict()}


def evaluation_tasks(config: KelvinConfig, settings: EvaluationSettings) -> list[Any]:
    """The tasks whose held-out sets evaluate a final model: `settings.tasks`, or the training task."""
    from kelvin.tasks import build_task

    names = settings.tasks or [config.task.name]
    tasks = []
    for name in names:
        tree = to_dict(config)
        if name != config.task.name:  # the training task's data_path belongs to it, not to the benchmarks
            tree["task"]["data_path"] = None
        tree["task"]["name"] = name
        tree["task"]["eval_size"] = max(settings.size, settings.validation_size) or config.task.eval_size
        tasks.append(build_task(config_from_dict(tree)))
    return tasks


def check_validation_split(tasks: list[Any], why: str) -> None:
    """Refuse, before any training, an evaluation that must choose on a validation split the tasks do not have."""
    missing = [task.name for task in tasks if task.validation is None]
    if missing:
        raise ValueError(
            f"{why} needs a validation split, and task(s) {missing} have none (arithmetic and reasoning_gym have "
            "one). Use evaluation.primary: greedy (or T=<x>) and no selection:, or a task with a validation split."
        )


def _problems(task: Any, split: str, settings: EvaluationSettings) -> list[Any]:
    if split == "test":
        return task.test[: settings.size] if settings.size else task.test
    examples = task.validation()
    size = settings.validation_size or settings.size
    return examples[:size] if size else examples


def _learned_controller(folder: Path, controller: str, seed: int) -> Any:
    """The controller that picks its own temperature at inference (e.g. IntroLLM's head)."""
    loaded = load_learned_controller(folder / "model", seed=seed)
    if loaded is None:
        raise FileNotFoundError(
            f"'{folder / 'model'}' holds no learned temperature, but controller '{controller}' learns one: train the "
            "run again, or set evaluation.learned_temperature=false."
        )
    return loaded


def evaluate_run(
    folder: Path, config: KelvinConfig, arm: str, controller: str, seed: int, settings: EvaluationSettings, role: Role
) -> RunEvaluation:
    """Evaluate a run's final model as its plan says and write evaluation.json (reused when it is current)."""
    from kelvin.models.loading import load_pretrained

    plan = evaluation_plan(settings, controller, role)
    key = evaluation_key(settings, plan)
    target = folder / EVALUATION_FILE
    current = RunEvaluation.read(target)
    if current is not None and current.settings == key:
        return current
    device = resolve_device(config.trainer.device)
    model, tokenizer = load_pretrained(folder / "model", dtype=torch_dtype(config.model.dtype))
    model.to(device).eval()
    needs_learned = LEARNED in plan.test or LEARNED in plan.validation
    learned = _learned_controller(folder, controller, settings.seed) if needs_learned else None
    for module in learned.modules() if learned is not None else []:
        module.to(device)
    tasks = evaluation_tasks(config, settings)
    if plan.validation:
        check_validation_split(tasks, f"evaluation of {arm} seed {seed} on the validation split")

    evaluation = RunEvaluation(
        settings=key,
        arm=arm,
        seed=seed,
        results=_evaluate_split(model, tokenizer, learned, tasks, "test", plan.test, config, settings),
        validation=_evaluate_split(model, tokenizer, learned, tasks, "validation", plan.validation, config, settings),
    )
    if learned is not None and role == "comparison" and settings.token_samples > 0:
        samples = token_samples(model, tokenizer, tasks[0], learned, config, settings)
        (folder / TOKEN_SAMPLES_FILE).write_text(json.dumps(samples))
    write_json(target, evaluation.to_dict())
    del model
    gc.collect()
    return evaluation


def _evaluate_split(
    model: torch.nn.Module,
    tokenizer: Any,
    learned: Any,
    tasks: list[Any],
    split: str,
    temperatures: list[float | None],
    config: KelvinConfig,
    settings: EvaluationSettings,
) -> dict[str, SettingEvaluation]:
    """Every task's problems of one split at every setting (a temperature, or LEARNED: the `learned` controller)."""
    from kelvin.eval.evaluation import evaluate

    out: dict[str, SettingEvaluation] = {}
    for temperature in temperatures:
        per_task: dict[str, TaskEvaluation] = {}
        for task in tasks:
            result = evaluate(
                model,
                tokenizer,
                _problems(task, split, settings),
                task.verify,
                task.extract,
                k=settings.k,
                temperature=1.0 if temperature is None else temperature,
                top_p=settings.top_p,
                max_new_tokens=settings.max_completion_length or config.sampling.max_completion_length,
                controller=learned if temperature is None else None,
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
        out[setting_label(temperature)] = SettingEvaluation(
            temperature=temperature,
            tasks=per_task,
            metrics=mean_over_tasks([entry.metrics for entry in per_task.values()]),
        )
    return out


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


def evaluation_units(config: KelvinConfig, settings: EvaluationSettings, controller: str, role: Role) -> int:
    """Evaluation cost in training-step units, for the ETA: sampled sequences over a rollout batch, at half a step's
    cost per batch (sampling without the backward pass). A rough guide, refined by the progress bar's own speed."""
    plan = evaluation_plan(settings, controller, role)
    test = sum(1 if t == 0 else settings.k for t in plan.test) * (settings.size or config.task.eval_size)
    size = settings.validation_size or settings.size or config.task.eval_size
    validation = sum(1 if t == 0 else settings.k for t in plan.validation) * size
    sequences = (test + validation) * max(len(settings.tasks), 1)
    return max(1, round(0.5 * sequences / config.rollout_batch_size))


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
