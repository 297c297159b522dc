"""Rewards: the task's verifier (accuracy, 0/1) plus optional reward functions with TRL's signature.

A reward function is `f(completions: list[str], **columns) -> list[float | None]`, called once per batch with the
columns `prompt` (and `prompts`, TRL's name for it), `answer` and every key of `Example.columns`, each a list with one
entry per completion. None means "no reward for this sample": NaN in `per_function`, 0 in the weighted sum (TRL's
nansum). Functions are given as 'module:function', 'path/to/file.py:function' or callables.

Every call runs in a worker process (forked, so callables need not pickle) and is bounded by `timeout_s`: one
verifier call per completion, one reward-function call per batch. The worker writes which call it is in and when it
started into shared memory; the parent waits on the result pipe and, when a call runs over the limit, kills the worker
(a signal cannot stop C code, a kill can), records the call as timed out, forks a fresh worker and resubmits the
rest. A call that raises, returns garbage, or kills its worker is counted as a failure. Either way those samples get
no reward and training goes on. Calls are batched: one pipe round trip per batch, so the arithmetic verifier (string
matching) costs ~1 ms per 512 completions on top of the matching itself (bench/reward_overhead.py).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import math
import multiprocessing
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kelvin.rewards.math_answers import extract_boxed, extract_final_answer, math_equal, preload_math_verify
from kelvin.tasks.base import Example, Task

__all__ = [
    "RewardResult",
    "Rewarder",
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
_KILL_GRACE_S = 0.5  # beyond timeout_s, for the parent's wake-up latency; the worker is killed at limit + grace
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


def _as_reward(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


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
class _UnitResult:
    """The rewards of one unit of work: unit 0 = the verifier over every sample, unit j = reward function j."""

    unit: int
    values: list[float | None]
    failures: int = 0
    errors: list[str] = field(default_factory=list)


class _Progress:
    """Which call the worker is in, since when, and how many calls it has begun, in shared memory
    ([call id (-1: between calls), start time, calls begun])."""

    def __init__(self, shared: Any | None) -> None:
        self.shared = shared

    def begin(self, call_id: int) -> None:
        if self.shared is not None:
            self.shared[1] = time.monotonic()  # start first, id second: a reader never pairs a new id with an old time
            self.shared[0] = call_id
            self.shared[2] += 1

    def end(self) -> None:
        if self.shared is not None:
            self.shared[0] = -1.0


def _run_unit(
    unit: int,
    completions: list[str],
    examples: list[Example],
    verify: Callable[[str, Example], bool],
    functions: Sequence[RewardFunction],
    names: Sequence[str],
    skip: frozenset[int],
    progress: _Progress,
) -> _UnitResult:
    n = len(completions)
    if unit == 0:
        result = _UnitResult(0, [None] * n)
        for i, (completion, example) in enumerate(zip(completions, examples, strict=True)):
            if i in skip:
                continue
            progress.begin(i)
            try:
                result.values[i] = 1.0 if verify(completion, example) else 0.0
            except Exception as err:
                result.failures += 1
                result.errors.append(f"{VERIFIER_NAME}: sample {i}: {type(err).__name__}: {err}")
            finally:
                progress.end()
        return result
    call_id = n + unit - 1
    result = _UnitResult(unit, [None] * n)
    if call_id in skip:
        return result
    name = names[unit - 1]
    progress.begin(call_id)
    try:
        raw = functions[unit - 1](list(completions), **reward_columns(examples))
        if raw is None or isinstance(raw, (str, bytes)) or len(raw) != n:
            raise TypeError(f"returned {type(raw).__name__} {raw!r:.80}; expected a list of {n} floats or None")
        result.values = [_as_reward(v) for v in raw]
    except Exception as err:
        result.values = [None] * n
        result.failures += 1
        result.errors.append(f"{name}: {type(err).__name__}: {err}")
    finally:
        progress.end()
    return result


def _worker_main(
    connection: Connection,
    shared: Any,
    verify: Callable[[str, Example], bool],
    functions: Sequence[RewardFunction],
    names: Sequence[str],
) -> None:
    progress = _Progress(shared)
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return  # the parent is gone or closed the pipe
        if message is None:
            return
        completions, examples, units, skip = message
        for unit in units:
            connection.send(_run_unit(unit, completions, examples, verify, functions, names, skip, progress))
        connection.send("done")


@dataclass
class _Lost:
    """The worker was killed (timeout) or died while in call `call_id` (None: outside any call)."""

    call_id: int | None
    timed_out: bool
    reason: str


class _Worker:
    """One forked worker process, its pipe and its progress record."""

    def __init__(self, verify: Callable, functions: Sequence[RewardFunction], names: Sequence[str]) -> None:
        context = multiprocessing.get_context("fork")
        self.shared = context.RawArray("d", 3)
        self.shared[0] = -1.0
        self.connection, child_end = context.Pipe()
        self.process = context.Process(
            target=_worker_main,
            args=(child_end, self.shared, verify, functions, names),
            name="kelvin-reward-worker",
            daemon=True,
        )
        self.process.start()
        child_end.close()

    def alive(self) -> bool:
        return self.process.is_alive()

    def send(self, message: Any) -> None:
        self.connection.send(message)

    def receive(self, timeout_s: float) -> Any:
        """The next message, or a _Lost after killing a worker whose call ran over `timeout_s` (or that died)."""
        limit = timeout_s + _KILL_GRACE_S
        idle_since = time.monotonic()
        seen_calls = self.shared[2]
        while True:
            call_id = int(self.shared[0])
            started = self.shared[1]
            now = time.monotonic()
            if self.shared[2] != seen_calls:  # progress since the last look: the worker is not stalled
                seen_calls, idle_since = self.shared[2], now
            deadline = (started if call_id >= 0 else idle_since) + limit
            if self.connection.poll(max(0.0, min(deadline - now, 1.0))):
                try:
                    return self.connection.recv()
                except (EOFError, OSError):
                    return self._died()
            if not self.process.is_alive() and not self.connection.poll(0):
                return self._died()
            unchanged = int(self.shared[0]) == call_id and self.shared[2] == seen_calls
            if time.monotonic() >= deadline and unchanged:
                reason = f"ran over {timeout_s:g} s" if call_id >= 0 else "the reward worker stalled between calls"
                return self._lost(call_id, timed_out=call_id >= 0, reason=reason)

    def _died(self) -> _Lost:
        # A dead worker's progress record is frozen at the call it died in.
        return self._lost(int(self.shared[0]), timed_out=False, reason="the reward worker died")

    def _lost(self, call_id: int, timed_out: bool, reason: str) -> _Lost:
        self.kill()
        return _Lost(call_id if call_id >= 0 else None, timed_out, reason)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.connection.send(None)
        self.process.join(timeout=1)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.connection.close()


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
        self._worker: _Worker | None = None
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

    def __call__(self, completions: list[str], examples: list[Example]) -> RewardResult:
        if len(completions) != len(examples):
            raise ValueError(f"Rewarder got {len(completions)} completions but {len(examples)} examples.")
        with self._lock:
            units, failures, timeouts, errors = self._compute(list(completions), list(examples))
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

    def _compute(
        self, completions: list[str], examples: list[Example]
    ) -> tuple[dict[int, list[float | None]], int, int, list[str]]:
        n = len(completions)
        units: dict[int, list[float | None]] = {}
        pending = list(range(len(self.names)))
        skip: set[int] = set()
        failures = timeouts = 0
        errors: list[str] = []

        def take(result: _UnitResult) -> None:
            nonlocal failures
            units[result.unit] = result.values
            failures += result.failures
            errors.extend(result.errors)
            pending.remove(result.unit)

        if not self._use_process or n == 0:
            for unit in pending[:]:
                take(
                    _run_unit(
                        unit,
                        completions,
                        examples,
                        self.task.verify,
                        self.functions,
                        self.names,
                        frozenset(),
                        _Progress(None),
                    )
                )
            return units, failures, timeouts, errors

        while pending:
            worker = self._ensure_worker()
            try:
                worker.send((completions, examples, list(pending), frozenset(skip)))
            except (OSError, EOFError):  # the idle worker died (e.g. killed from outside): fork a new one
                worker.kill()
                worker = self._worker = _Worker(self.task.verify, self.functions, self.names)
                worker.send((completions, examples, list(pending), frozenset(skip)))
            while True:
                message = worker.receive(self.timeout_s)
                if isinstance(message, _UnitResult):
                    take(message)
                    continue
                if isinstance(message, _Lost):
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

    def _ensure_worker(self) -> _Worker:
        if self._worker is None or not self._worker.alive():
            if self._worker is not None:
                self._worker.kill()
            self._worker = _Worker(self.task.verify, self.functions, self.names)
        return self._worker
