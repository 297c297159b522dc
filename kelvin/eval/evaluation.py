"""Evaluation: sample k completions per problem and report avg@k, unbiased pass@k and maj@k (DESIGN section 6).

    avg@k   mean correctness over all k samples of every problem (the expected pass@1 of one sample)
    pass@j  unbiased estimate from n = k samples with c correct: 1 - C(n-c, j) / C(n, j), for j = 1, 2, 4, ... <= k
            (and k itself), averaged over problems (Chen et al. 2021)
    maj@k   correctness of the most frequent extracted final answer among the k samples (majority voting)

Completions come from Kelvin's own sampler (kelvin.rl.sampling.sample) at a fixed temperature (0 = greedy) or from a
temperature controller (e.g. a learned IntroLLM head). Verification runs through the Rewarder, so a verifier that
hangs is cut off at `timeout_s` and counts as wrong.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from kelvin.config import KelvinConfig
from kelvin.controllers import at_temperature
from kelvin.controllers.base import TemperatureController
from kelvin.models.loading import eos_ids
from kelvin.rewards.functions import Rewarder
from kelvin.rewards.math_answers import normalize_answer
from kelvin.rl.engine import BatchSampler
from kelvin.rl.sampling import SamplingSettings, sample
from kelvin.tasks.base import Example, Task
from kelvin.tasks.prompts import encode_prompts

Verify = Callable[[str, Example], bool]
Extract = Callable[[str], str | None]

# --------------------------------------------------------------------------------------------------------------------
# Metrics (pure functions)
# --------------------------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms the (huge) binomials.
    """
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}.")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def avg_at_k(correct: Sequence[bool], k: int | None = None) -> float:
    """Mean correctness of the first k samples (all when k is None)."""
    chosen = list(correct)[: k if k is not None else len(correct)]
    if not chosen:
        raise ValueError("avg_at_k needs at least one sample.")
    return sum(bool(x) for x in chosen) / len(chosen)


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of the sample whose answer wins the vote, or None when no sample has an answer.

    Answers are compared after `normalize_answer` (whitespace, '$', thousands separators, "18.0" == "18"); samples
    without an answer do not vote. Ties go to the answer that appeared first, so the choice never looks at
    correctness; the returned index is that answer's first sample.
    """
    keys = [normalize_answer(a) for a in answers]
    counts = Counter(key for key in keys if key is not None)
    if not counts:
        return None
    best = max(counts.values())
    for index, key in enumerate(keys):
        if key is not None and counts[key] == best:
            return index
    return None  # unreachable: some key has the best count


def majority_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int | None = None) -> float:
    """1.0 when the majority answer of the first k samples (see `majority_vote`) is correct, else 0.0."""
    if len(answers) != len(correct):
        raise ValueError(f"majority_at_k got {len(answers)} answers but {len(correct)} correctness flags.")
    limit = k if k is not None else len(answers)
    winner = majority_vote(list(answers)[:limit])
    return 0.0 if winner is None else float(bool(correct[winner]))


def pass_k_values(k: int) -> list[int]:
    """The j reported as pass@j: powers of two up to k, and k itself."""
    values = [1 << i for i in range(k.bit_length()) if 1 << i <= k]
    return values if values[-1] == k else [*values, k]


# --------------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ProblemSamples:
    """The k samples of one problem."""

    id: str
    gold: str
    correct: list[bool]
    answers: list[str | None]  # extracted final answers (None: no answer found, or no extractor)
    lengths: list[int]  # completion tokens
    completions: list[str] | None = None  # kept on request only (they can be large)


@dataclass
class EvalResult:
    name: str  # benchmark / task name
    setting: str  # "T=0.6", "greedy" or "controller:<name>"
    temperature: float | None  # None when a controller chose the temperature
    k: int
    num_examples: int
    avg_at_k: float
    pass_at_k: dict[int, float]
    maj_at_k: float | None  # None without an answer extractor
    mean_completion_tokens: float
    truncated_fraction: float  # completions that hit max_new_tokens without EOS
    verify_failures: int = 0
    verify_timeouts: int = 0
    seconds: float = 0.0
    problems: list[ProblemSamples] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Flat metric names: avg@k, pass@j, maj@k."""
        out = {f"avg@{self.k}": self.avg_at_k}
        out.update({f"pass@{j}": v for j, v in self.pass_at_k.items()})
        if self.maj_at_k is not None:
            out[f"maj@{self.k}"] = self.maj_at_k
        return out

    def to_dict(self, with_problems: bool = True) -> dict[str, Any]:
        data = asdict(self)
        data["pass_at_k"] = {str(j): v for j, v in self.pass_at_k.items()}
        if not with_problems:
            data.pop("problems")
        return data


@dataclass
class EvalReport:
    """Results of several benchmarks at several settings, with per-setting unweighted means over benchmarks."""

    results: list[EvalResult]
    averages: dict[str, dict[str, float]] = field(default_factory=dict)  # setting -> metric -> mean

    def to_dict(self, with_problems: bool = True) -> dict[str, Any]:
        return {"results": [r.to_dict(with_problems) for r in self.results], "averages": self.averages}


def average_by_setting(results: Sequence[EvalResult]) -> dict[str, dict[str, float]]:
    """For every setting, the mean of each metric over the benchmarks that report it (each benchmark weighs 1)."""
    settings = dict.fromkeys(r.setting for r in results)
    return {s: mean_over_tasks([r.metrics() for r in results if r.setting == s]) for s in settings}


def mean_over_tasks(per_task: Sequence[dict[str, float]]) -> dict[str, float]:
    """Unweighted mean of every metric over the tasks that report it (the papers' 'Average' over benchmarks)."""
    names = dict.fromkeys(name for metrics in per_task for name in metrics)
    return {name: sum(m[name] for m in per_task if name in m) / sum(name in m for m in per_task) for name in names}


# --------------------------------------------------------------------------------------------------------------------
# Sampling + scoring
# --------------------------------------------------------------------------------------------------------------------


def setting_label(temperature: float | None, controller: str | None = None) -> str:
    """'greedy', 'T=0.6', or for a controller's own temperature 'controller:<name>' (`kelvin eval`) or, unnamed,
    'learned' (comparison results). The one place these labels are made."""
    if controller is not None:
        return f"controller:{controller}"
    if temperature is None:
        return "learned"
    return "greedy" if temperature == 0 else f"T={temperature:g}"


@torch.no_grad()
def _sample_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: list[str],
    controller: TemperatureController,
    settings: SamplingSettings,
    initial_temperature: float,
    batch_size: int,
    generator: torch.Generator,
    use_chat_template: bool,
    system_prompt: str | None,
    max_prompt_length: int | None,
    step: int,
    engine: BatchSampler | None = None,
) -> tuple[list[str], list[int], list[bool]]:
    device = next(model.parameters()).device
    texts: list[str] = []
    lengths: list[int] = []
    truncated: list[bool] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        ids, mask = encode_prompts(
            tokenizer, chunk, use_chat_template, system_prompt, max_prompt_length, pad_id=settings.pad_id
        )
        if engine is not None:  # another engine (vLLM): one temperature for the whole batch
            tau = 0.0 if settings.greedy else float(controller.batch_temperature() or initial_temperature)
            rollouts = engine.sample(ids.to(device), mask.to(device), tau, generator, settings)
        else:
            rollouts = sample(
                model, ids.to(device), mask.to(device), controller, settings, step, generator, initial_temperature
            )
        counts = rollouts.completion_mask.sum(dim=1).tolist()
        for row, count in enumerate(counts):
            tokens = rollouts.completion_ids[row, : int(count)].tolist()
            texts.append(tokenizer.decode(tokens, skip_special_tokens=True))
            lengths.append(int(count))
        truncated.extend(bool(x) for x in rollouts.truncated.tolist())
    return texts, lengths, truncated


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    verify: Verify,
    extract: Extract | None = None,
    *,
    k: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 256,
    controller: TemperatureController | None = None,
    batch_size: int = 64,
    seed: int = 0,
    use_chat_template: bool = True,
    system_prompt: str | None = None,
    max_prompt_length: int | None = None,
    timeout_s: float = 5.0,
    name: str = "eval",
    keep_completions: bool = False,
    step: int = 0,
    cache: str = "static",
    engine: BatchSampler | None = None,
) -> EvalResult:
    """Sample k completions per example and score them.

    `temperature` 0 decodes greedily (one completion, repeated k times, so pass@j = avg@k = greedy accuracy).
    A `controller` replaces the fixed temperature; it is used in its current state (evaluate calls neither its
    `begin_step` nor `update`). The chat template is applied when `use_chat_template` and the tokenizer has one.
    The same `seed` gives the same samples, so settings compared at one seed are paired. `engine` samples instead of
    Kelvin's sampler on `model` (vLLM: `kelvin eval --engine vllm`); it takes fixed temperatures only.
    """
    if k < 1:
        raise ValueError(f"k={k} must be >= 1 (samples per problem).")
    if temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy).")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1.")
    if not examples:
        raise ValueError(f"evaluate({name}) got no examples.")
    if engine is not None and controller is not None and not controller.batch_level:
        raise ValueError(f"controller {controller.name} sets tau per token: evaluate it with Kelvin's sampler.")
    started = time.perf_counter()
    greedy = controller is None and temperature == 0
    tau = 1.0 if greedy else temperature
    chosen = controller if controller is not None else at_temperature(tau)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    settings = SamplingSettings(
        max_new_tokens=max_new_tokens,
        eos_ids=eos_ids(model, tokenizer),
        pad_id=int(pad_id),
        top_p=top_p,
        top_k=top_k,
        cache=cache,
        greedy=greedy,
    )
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    draws = 1 if greedy else k
    rows = [example for example in examples for _ in range(draws)]
    texts, lengths, truncated = _sample_texts(
        model,
        tokenizer,
        [e.prompt for e in rows],
        chosen,
        settings,
        tau if controller is None else float(controller.batch_temperature() or 1.0),
        batch_size,
        generator,
        use_chat_template,
        system_prompt,
        max_prompt_length,
        step,
        engine,
    )
    checker = Task(name=name, train=rows.__getitem__, test=list(examples), verify=verify)
    with Rewarder(checker, timeout_s=timeout_s) as rewarder:
        scored = rewarder(texts, rows)
    correct = [bool(x) for x in scored.accuracy.tolist()]
    answers = [extract(t) if extract is not None else None for t in texts]

    problems: list[ProblemSamples] = []
    for i, example in enumerate(examples):
        span = slice(i * draws, (i + 1) * draws)
        repeat = k if greedy else 1
        problems.append(
            ProblemSamples(
                id=example.id,
                gold=example.answer,
                correct=correct[span] * repeat,
                answers=answers[span] * repeat,
                lengths=lengths[span] * repeat,
                completions=texts[span] * repeat if keep_completions else None,
            )
        )
    pass_values = {j: sum(pass_at_k(k, sum(p.correct), j) for p in problems) / len(problems) for j in pass_k_values(k)}
    return EvalResult(
        name=name,
        setting=setting_label(temperature, None if controller is None else controller.name),
        temperature=None if controller is not None else temperature,
        k=k,
        num_examples=len(problems),
        avg_at_k=sum(avg_at_k(p.correct) for p in problems) / len(problems),
        pass_at_k=pass_values,
        maj_at_k=(sum(majority_at_k(p.answers, p.correct) for p in problems) / len(problems)) if extract else None,
        mean_completion_tokens=sum(lengths) / len(lengths),
        truncated_fraction=sum(truncated) / len(truncated),
        verify_failures=scored.failures,
        verify_timeouts=scored.timeouts,
        seconds=time.perf_counter() - started,
        problems=problems,
    )


def evaluate_task(model: torch.nn.Module, tokenizer: Any, task: Task, **options: Any) -> EvalResult:
    """`evaluate` on a task's held-out examples with its verifier, extractor and chat-template choice."""
    options.setdefault("use_chat_template", task.use_chat_template)
    options.setdefault("name", task.name)
    return evaluate(model, tokenizer, task.test, task.verify, task.extract, **options)


def evaluate_suite(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: Sequence[Task],
    temperatures: Sequence[float] = (1.0,),
    controller: TemperatureController | None = None,
    limit: int | None = None,
    on_result: Callable[[EvalResult], None] | None = None,
    **options: Any,
) -> EvalReport:
    """Every task at every temperature (a sweep), or once with `controller`; `limit` keeps the first N problems of
    each task. The chat template is used for tasks that want it unless `use_chat_template=False`. `on_result` sees
    each result as soon as it is ready (progress printing)."""
    results: list[EvalResult] = []
    settings: list[float | None] = [None] if controller is not None else list(temperatures)
    for temperature in settings:
        for task in tasks:
            examples = task.test[:limit] if limit else task.test
            result = evaluate(
                model,
                tokenizer,
                examples,
                task.verify,
                task.extract,
                temperature=1.0 if temperature is None else temperature,
                controller=controller,
                use_chat_template=task.use_chat_template and options.get("use_chat_template", True),
                name=task.name,
                **{key: value for key, value in options.items() if key != "use_chat_template"},
            )
            results.append(result)
            if on_result is not None:
                on_result(result)
    return EvalReport(results, average_by_setting(results))


def held_out_accuracy(
    model: torch.nn.Module, tokenizer: Any, task: Task, config: KelvinConfig, temperature: float, step: int = 0
) -> float:
    """A training run's held-out accuracy: one sample per prompt of `task.test` at `temperature` (0 = greedy), with
    the run's sampling, prompt and reward settings and a fixed evaluation seed (it never moves the training stream).
    """
    result = evaluate_task(
        model,
        tokenizer,
        task,
        temperature=temperature,
        top_p=config.sampling.top_p,
        top_k=config.sampling.top_k,
        max_new_tokens=config.sampling.max_completion_length,
        batch_size=256,
        seed=12345,
        use_chat_template=task.use_chat_template and config.task.chat_template,
        system_prompt=config.task.system_prompt,
        max_prompt_length=config.sampling.max_prompt_length,
        timeout_s=config.reward.timeout_s,
        step=step,
        cache=config.sampling.cache,
    )
    # The float32 mean that runs have always logged, so seeded runs keep logging the same numbers.
    return float(torch.tensor([float(c) for p in result.problems for c in p.correct]).mean())
