"""Rewards: the task's verifier (accuracy, 0/1) plus optional reward functions with TRL's signature, composed.

A reward function is `f(completions: list[str], **kwargs) -> list[float | None]`, called once per batch with TRL's
keyword arguments: `prompts` (and `prompt`), `completion_ids` (each completion's token ids, no padding),
`trainer_state` (`.global_step` is the training step), `answer` and every dataset column (`Example.columns`), each a
list with one entry per completion. Accept `**kwargs` for the ones you do not use. `async def` functions are
awaited. None (or NaN) means "no reward for this sample": NaN in `per_function`, 0 in the weighted sum (TRL's
nansum). Functions are given as 'module:function', 'path/to/file.py:function' or callables; examples/rewards.py is
a runnable example.

A return value must be a list (or tuple, array, tensor) of one finite float or None per completion. Anything else is
a failure of that call (a dict, a string, the wrong length: no reward for the batch; inf, -inf or a value beyond
float32 in some rows: no reward for those rows), counted in `failures` and named in `errors`; training goes on.

Every call runs in the sandboxed worker of kelvin/rewards/worker.py, bounded by `timeout_s`: one verifier call per
completion, one reward-function call per batch. A call that runs over is killed and counted in `timeouts` (as is a
math-verify comparison that runs out of its own time limit); one that raises (even SystemExit or KeyboardInterrupt) or
kills its worker is counted in `failures`. Calls are batched: one pipe round trip per batch, so the arithmetic
verifier (string matching) costs ~1 ms per 512 completions on top of the matching itself (bench/reward_overhead.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import logging
import math
import multiprocessing
import numbers
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kelvin.rewards.math_answers import extract_boxed, extract_final_answer, math_equal, preload_math_verify
from kelvin.rewards.worker import Lost, Progress, Worker
from kelvin.tasks.base import Example, Task

__all__ = [
    "RewardResult",
    "Rewarder",
    "TrainerState",
    "completion_id_lists",
    "extract_boxed",
    "extract_final_answer",
    "math_equal",
    "preload_math_verify",
    "resolve_reward_function",
    "reward_columns",
]

logger = logging.getLogger(__name__)

RewardFunction = Callable[..., Sequence[float | None]]
VERIFIER_NAME = "accuracy"
_FLOAT32_MAX = 3.4028234663852886e38  # rewards are float32 tensors: a larger value is inf there
_MAX_ERRORS = 8  # error messages kept per batch


@dataclass
class RewardResult:
    rewards: Tensor  # [B] weighted sum over reward functions; a None counts as 0 (TRL's nansum)
    accuracy: Tensor  # [B] 1.0 where the verifier accepted the completion
    per_function: dict[str, Tensor] = field(default_factory=dict)  # [B] each, NaN where the function gave None
    failures: int = 0  # calls that raised, returned something unusable, or killed their worker
    timeouts: int = 0  # calls that ran over the time limit
    errors: list[str] = field(default_factory=list)  # the first few failure messages, for the log


def resolve_reward_function(spec: str | RewardFunction) -> RewardFunction:
    """A callable from 'package.module:function' or 'path/to/file.py:function' (or a callable, returned as is)."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"reward.functions entry {spec!r} must look like 'module:function' or 'path/to/file.py:function', "
            "e.g. 'my_rewards:length_penalty'."
        )
    module_name, function_name = spec.rsplit(":", 1)
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            module_spec = importlib.util.spec_from_file_location(f"kelvin_reward_{path.stem}", path)
            if module_spec is None or module_spec.loader is None:
                raise ImportError(f"cannot load {path} as a Python module")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except Exception as err:
        raise ValueError(
            f"reward.functions entry {spec!r}: cannot import '{module_name}' ({err}). Put the module on PYTHONPATH "
            "or give a file path ending in .py."
        ) from err
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ValueError(f"reward.functions entry {spec!r}: '{module_name}' has no function '{function_name}'.")
    return function


def reward_columns(examples: Sequence[Example]) -> dict[str, list[Any]]:
    """Keyword arguments for reward functions: prompt/prompts, answer and every Example.columns key (None where an
    example lacks it)."""
    prompts = [e.prompt for e in examples]
    columns: dict[str, list[Any]] = {"prompt": prompts, "prompts": prompts, "answer": [e.answer for e in examples]}
    keys: dict[str, None] = {}
    for example in examples:
        keys.update(dict.fromkeys(example.columns))
    for key in keys:
        if key not in columns:
            columns[key] = [e.columns.get(key) for e in examples]
    return columns


def _function_name(function: RewardFunction) -> str:
    return getattr(function, "__name__", type(function).__name__)


def _unique_names(functions: Sequence[RewardFunction]) -> list[str]:
    names: list[str] = []
    for function in functions:
        base = _function_name(function)
        name, i = base, 2
        while name in names or name == VERIFIER_NAME:
            name, i = f"{base}_{i}", i + 1
        names.append(name)
    return names


# --------------------------------------------------------------------------------------------------------------------
# The work itself (runs in the worker, or in-process where fork is unavailable)
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class TrainerState:
    """What TRL passes reward functions as `trainer_state` (the part of transformers' TrainerState they use)."""

    global_step: int = 0


@dataclass
class _UnitResult:
    """The rewards of one unit of work: unit 0 = the verifier over every sample, unit j = reward function j."""

    unit: int
    values: list[float | None]
    failures: int = 0
    timeouts: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class _Batch:
    """One batch for the worker: what to score, which units to run, which calls to skip (already lost)."""

    completions: list[str]
    examples: list[Example]
    units: list[int]
    skip: frozenset[int]
    completion_ids: list[list[int]] | None
    step: int


def _reward_values(raw: Any, n: int) -> tuple[list[float | None], int]:
    """A reward function's return as one float-or-None per completion, and how many values were unusable
    (inf, -inf, beyond float32: those become None). Raises TypeError for a return that is not a list of n numbers."""
    if hasattr(raw, "tolist") and not isinstance(raw, (list, tuple)):  # a tensor or numpy array
        raw = raw.tolist()
    if not isinstance(raw, (list, tuple)) or len(raw) != n:
        shown = repr(raw)[:80]
        raise TypeError(f"returned {type(raw).__name__} {shown}; expected a list of {n} floats or None")
    values: list[float | None] = []
    bad = 0
    for value in raw:
        if value is None:
            values.append(None)
            continue
        if isinstance(value, (str, bytes)) or not isinstance(value, numbers.Real):
            raise TypeError(f"returned a {type(value).__name__} ({value!r:.40}) among its rewards; expected floats")
        number = float(value)
        if math.isnan(number):
            values.append(None)  # NaN means "no reward" (TRL's convention), as None does
        elif not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
            values.append(None)
            bad += 1
        else:
            values.append(number)
    return values, bad


def _call(function: RewardFunction, completions: list[str], kwargs: dict[str, Any]) -> Any:
    """Call a reward function; await it if it is async (TRL accepts `async def` reward functions)."""
    if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(type(function).__call__):
        return asyncio.run(function(completions, **kwargs))
    raw = function(completions, **kwargs)
    if inspect.isawaitable(raw):

        async def wait() -> Any:
            return await raw

        return asyncio.run(wait())
    return raw


def _run_unit(
    unit: int,
    batch: _Batch,
    verify: Callable[[str, Example], bool],
    functions: Sequence[RewardFunction],
    names: Sequence[str],
    progress: Progress,
) -> _UnitResult:
    completions, examples = batch.completions, batch.examples
    n = len(completions)
    result = _UnitResult(unit, [None] * n)
    if unit == 0:
        for i, (completion, example) in enumerate(zip(completions, examples, strict=True)):
            if i in batch.skip:
                continue
            progress.begin(i)
            try:
                result.values[i] = 1.0 if verify(completion, example) else 0.0
            except TimeoutError as err:  # math-verify's own time limit ran out: a timeout, not a wrong answer
                result.timeouts += 1
                result.errors.append(f"{VERIFIER_NAME}: sample {i}: timed out ({err})")
            except BaseException as err:  # sys.exit or KeyboardInterrupt in a verifier: a failure too
                result.failures += 1
                result.errors.append(f"{VERIFIER_NAME}: sample {i}: {type(err).__name__}: {err}")
            finally:
                progress.end()
        return result
    call_id = n + unit - 1
    if call_id in batch.skip:
        return result
    name = names[unit]  # names[0] is the verifier's
    kwargs: dict[str, Any] = {
        **reward_columns(examples),
        "completion_ids": batch.completion_ids,
        "trainer_state": TrainerState(global_step=batch.step),
    }
    progress.begin(call_id)
    try:
        result.values, bad = _reward_values(_call(functions[unit - 1], list(completions), kwargs), n)
        if bad:
            result.failures += 1
            result.errors.append(
                f"{name}: returned {bad} non-finite value(s) (inf, -inf or beyond float32); those samples get no reward"
            )
    except TimeoutError as err:
        result.values = [None] * n
        result.timeouts += 1
        result.errors.append(f"{name}: timed out ({err})")
    except BaseException as err:  # sys.exit or KeyboardInterrupt in a function: its failure
        result.values = [None] * n
        result.failures += 1
        result.errors.append(f"{name}: {type(err).__name__}: {err}")
    finally:
        progress.end()
    return result


# --------------------------------------------------------------------------------------------------------------------
# The Rewarder
# --------------------------------------------------------------------------------------------------------------------


class Rewarder:
    """Scores completions: the task's verifier ("accuracy", 0/1) first, then `functions`, weighted.

    `weights` are TRL's `reward_weights` for [verifier, *functions] (None: 1.0 each). Calls run in a forked worker
    process bounded by `timeout_s` (see the module docstring); use `close()` (or `with Rewarder(...)`) to stop it.
    """

    def __init__(
        self,
        task: Task,
        functions: Sequence[str | RewardFunction] | None = None,
        weights: Sequence[float] | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"reward.timeout_s={timeout_s} must be > 0 (seconds per reward call).")
        self.task = task
        self.timeout_s = float(timeout_s)
        self.functions = [resolve_reward_function(f) for f in functions or []]
        self.names = [VERIFIER_NAME, *_unique_names(self.functions)]
        count = len(self.names)
        if weights is not None and len(weights) > 0 and len(weights) != count:
            raise ValueError(
                f"reward.weights has {len(weights)} entries but there are {count} rewards "
                f"({', '.join(self.names)}); give one weight each or none."
            )
        self.weights = torch.tensor(list(weights) if weights else [1.0] * count, dtype=torch.float32)
        self._worker: Worker | None = None
        self._lock = threading.Lock()
        self._use_process = "fork" in multiprocessing.get_all_start_methods()
        self._warned: set[str] = set()
        if not self._use_process:
            logger.warning("No 'fork' start method on %s: rewards run in-process without time limits.", sys.platform)

    def __enter__(self) -> Rewarder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def close(self) -> None:
        """Stop the worker process (a later call starts a new one)."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.close()

    def __call__(
        self,
        completions: list[str],
        examples: list[Example],
        completion_ids: list[list[int]] | None = None,
        step: int = 0,
    ) -> RewardResult:
        """Score a batch. `completion_ids` (token ids without padding) and `step` reach reward functions as TRL's
        `completion_ids` and `trainer_state.global_step`."""
        if len(completions) != len(examples):
            raise ValueError(f"Rewarder got {len(completions)} completions but {len(examples)} examples.")
        batch = _Batch(list(completions), list(examples), [], frozenset(), completion_ids, int(step))
        with self._lock:
            units, failures, timeouts, errors = self._compute(batch)
        for message in errors:
            name = message.split(":", 1)[0]
            if name not in self._warned:
                self._warned.add(name)
                logger.warning(
                    "Reward call failed (first failure of %s; later ones are only counted): %s", name, message
                )
        per_function = {
            name: torch.tensor([math.nan if v is None else v for v in units[u]], dtype=torch.float32)
            for u, name in enumerate(self.names)
        }
        stacked = torch.stack([per_function[name] for name in self.names], dim=1)
        rewards = (stacked * self.weights.unsqueeze(0)).nansum(dim=1)
        accuracy = torch.nan_to_num(per_function[VERIFIER_NAME], nan=0.0)
        return RewardResult(rewards, accuracy, per_function, failures, timeouts, errors[:_MAX_ERRORS])

    def _run(self, batch: _Batch, progress: Progress) -> Iterator[_UnitResult]:
        """The worker's job: every unit of `batch` in order (also run in-process when fork is unavailable)."""
        for unit in batch.units:
            yield _run_unit(unit, batch, self.task.verify, self.functions, self.names, progress)

    def _compute(self, batch: _Batch) -> tuple[dict[int, list[float | None]], int, int, list[str]]:
        n = len(batch.completions)
        units: dict[int, list[float | None]] = {}
        pending = list(range(len(self.names)))
        skip: set[int] = set()
        failures = timeouts = 0
        errors: list[str] = []

        def take(result: _UnitResult) -> None:
            nonlocal failures, timeouts
            units[result.unit] = result.values
            failures += result.failures
            timeouts += result.timeouts
            errors.extend(result.errors)
            pending.remove(result.unit)

        if not self._use_process or n == 0:
            for result in self._run(replace(batch, units=list(pending)), Progress()):
                take(result)
            return units, failures, timeouts, errors

        while pending:
            message_out = replace(batch, units=list(pending), skip=frozenset(skip))
            worker = self._ensure_worker()
            try:
                worker.send(message_out)
            except (OSError, EOFError):  # the idle worker died (e.g. killed from outside): fork a new one
                worker.kill()
                worker = self._worker = Worker(self._run)
                worker.send(message_out)
            while True:
                message = worker.receive(self.timeout_s)
                if isinstance(message, _UnitResult):
                    take(message)
                    continue
                if isinstance(message, Lost):
                    self._worker = None  # killed; the next round forks a fresh one
                    if message.timed_out:
                        timeouts += 1
                    else:
                        failures += 1
                    errors.append(f"{self._call_name(message.call_id, n)}: {message.reason}")
                    if message.call_id is None:  # stalled outside any call: give up on this batch
                        for unit in pending[:]:
                            take(_UnitResult(unit, [None] * n))
                    else:
                        skip.add(message.call_id)
                break  # "done", or resubmit the rest to a new worker
        return units, failures, timeouts, errors

    def _call_name(self, call_id: int | None, n: int) -> str:
        if call_id is None:
            return "worker"
        if call_id < n:
            return f"{VERIFIER_NAME}: sample {call_id}"
        return self.names[call_id - n + 1]

    def _ensure_worker(self) -> Worker:
        if self._worker is None or not self._worker.alive():
            if self._worker is not None:
                self._worker.kill()
            self._worker = Worker(self._run)
        return self._worker


def completion_id_lists(ids: Tensor, mask: Tensor) -> list[list[int]]:
    """Each row's completion token ids without padding (TRL's `completion_ids` argument of reward functions)."""
    return [row[keep.bool()].tolist() for row, keep in zip(ids.cpu(), mask.cpu(), strict=True)]
