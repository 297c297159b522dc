"""The sandboxed reward worker: a forked process that runs reward calls under a time limit, and dies with its parent.

The worker writes which call it is in and when it started into shared memory; the parent waits on the result pipe
and, when a call runs over the limit, kills the worker (a signal cannot stop C code, a kill can) and reports the call
as lost. What a call computes is not this module's business: the worker runs `run(message, progress)` and sends back
every result it yields, then "done".

A worker must not outlive its parent (a killed trainer once left one ~300 MB worker per kill): the child closes its
copy of the parent's pipe end (so the parent's death is an EOF on the pipe), asks Linux to SIGKILL it when the parent
dies (PR_SET_PDEATHSIG; this also covers a worker stuck inside a call), and checks that the parent did not die before
that request took effect.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from kelvin.processes import die_with_parent

_KILL_GRACE_S = 0.5  # beyond timeout_s, for the parent's wake-up latency; the worker is killed at limit + grace


class Progress:
    """Which call the worker is in, since when, and how many calls it has begun, in shared memory
    ([call id (-1: between calls), start time, calls begun]). No shared memory: records nothing (in-process use)."""

    def __init__(self, shared: Any | None = None) -> None:
        self.shared = shared

    def begin(self, call_id: int) -> None:
        if self.shared is not None:
            self.shared[1] = time.monotonic()  # start first, id second: a reader never pairs a new id with an old time
            self.shared[0] = call_id
            self.shared[2] += 1

    def end(self) -> None:
        if self.shared is not None:
            self.shared[0] = -1.0


Run = Callable[[Any, Progress], Iterable[Any]]


@dataclass
class Lost:
    """The worker was killed (timeout) or died while in call `call_id` (None: outside any call)."""

    call_id: int | None
    timed_out: bool
    reason: str


def _worker_main(connection: Connection, parent_end: Connection, parent_pid: int, shared: Any, run: Run) -> None:
    parent_end.close()  # keep only our end: when the parent dies, recv() sees EOF
    die_with_parent(parent_pid)
    progress = Progress(shared)
    while True:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return  # the parent is gone or closed the pipe
        if message is None:
            return
        for result in run(message, progress):
            connection.send(result)
        connection.send("done")


class Worker:
    """One forked worker process, its pipe and its progress record."""

    def __init__(self, run: Run) -> None:
        context = multiprocessing.get_context("fork")
        self.shared = context.RawArray("d", 3)
        self.shared[0] = -1.0
        self.connection, child_end = context.Pipe()
        self.process = context.Process(
            target=_worker_main,
            args=(child_end, self.connection, os.getpid(), self.shared, run),
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
        """The next message, or a Lost after killing a worker whose call ran over `timeout_s` (or that died)."""
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

    def _died(self) -> Lost:
        # A dead worker's progress record is frozen at the call it died in.
        self.process.join(timeout=1)
        code = self.process.exitcode
        return self._lost(int(self.shared[0]), timed_out=False, reason=f"the reward worker died (exit code {code})")

    def _lost(self, call_id: int, timed_out: bool, reason: str) -> Lost:
        self.kill()
        return Lost(call_id if call_id >= 0 else None, timed_out, reason)

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
