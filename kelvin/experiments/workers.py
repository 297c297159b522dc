"""Runs of a comparison trained `jobs` at a time, each in a spawned worker process (fork is unsafe once torch has
started its thread pools). The pool owns its processes: it can kill them, and it notices one that dies.

The workers die with the process that started them, however it ends (a killed comparison once left its runs training
and writing into run folders that the rerun was resuming), and SIGTERM here stops them at once instead of waiting for
the runs in flight to finish.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue
import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kelvin.experiments.progress import RunEvent
from kelvin.processes import die_with_parent

POLL_S = 0.2  # how often the parent checks for events and for workers that died


@dataclass(frozen=True)
class Finished:
    """A worker finished run `index` with `result`, or failed with `error` (and its traceback, as text)."""

    index: int
    result: Any = None
    error: BaseException | None = None
    trace: str = ""


def run_in_processes(
    work: Callable[[int, Callable[[RunEvent], None]], Any],
    count: int,
    jobs: int,
    on_event: Callable[[RunEvent], None],
) -> list[Any]:
    """`work(i, send)` for i in range(count), `jobs` at a time in worker processes; returns the results in order.

    `work` must be picklable (a module-level function or a functools.partial of one); it reports progress through
    `send(event)`, which reaches `on_event` in this process. A run that raises stops the comparison with that error;
    a worker that dies stops it with the run and the exit code named."""
    context = multiprocessing.get_context("spawn")
    tasks: Any = context.Queue()
    inbox: Any = context.Queue()
    for index in range(count):
        tasks.put(index)
    # Each worker's run in flight, in shared memory: written before the run starts, so it outlives a worker's death
    # (what a killed process had queued for sending may be lost).
    current = [context.Value("i", -1) for _ in range(min(jobs, count))]
    workers = [context.Process(target=_worker, args=(work, tasks, inbox, slot, os.getpid())) for slot in current]
    for _ in workers:
        tasks.put(None)  # one stop sign per worker, after the runs
    results: dict[int, Any] = {}
    try:
        with _sigterm_raises():
            for process in workers:
                process.start()
            while len(results) < count:
                try:
                    message = inbox.get(timeout=POLL_S)
                except queue.Empty:
                    _check_alive(workers, current)
                    continue
                if isinstance(message, RunEvent):
                    on_event(message)
                elif message.error is not None:
                    raise message.error from RuntimeError(f"in the worker of run {message.index}:\n{message.trace}")
                else:
                    results[message.index] = message.result
    finally:
        for process in workers:
            if process.is_alive() and len(results) < count:
                process.kill()  # leaving otherwise would wait for the runs in flight
            process.join(timeout=30)
    return [results[i] for i in range(count)]


def _worker(work: Callable[..., Any], tasks: Any, inbox: Any, current: Any, parent: int) -> None:
    die_with_parent(parent)
    while (index := tasks.get()) is not None:
        current.value = index
        try:
            inbox.put(Finished(index, result=work(index, inbox.put)))
        except BaseException as err:  # sent to the parent, which stops the comparison with it
            inbox.put(Finished(index, error=_picklable(err), trace=traceback.format_exc()))
            return
        current.value = -1


def _picklable(err: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def _check_alive(workers: list[Any], current: list[Any]) -> None:
    for process, slot in zip(workers, current, strict=True):
        if process.exitcode not in (None, 0):
            what = f"while on run {slot.value}" if slot.value >= 0 else "between runs"
            raise RuntimeError(
                f"A comparison worker (pid {process.pid}) died {what} with exit code {process.exitcode}."
            )


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
