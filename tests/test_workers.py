"""The comparison's worker pool (kelvin/experiments/workers.py): results in order, events forwarded, a run's error
raised in the parent with its type, and a worker that dies named instead of hanging the comparison."""

from __future__ import annotations

import os

import pytest

from kelvin.experiments.progress import RunEvent, Stage
from kelvin.experiments.workers import run_in_processes


def _square(index: int, send) -> int:
    send(RunEvent.of(index, Stage.STEP, {"step": index, "ignored": 1.0}))
    return index * index


def _fails_on_two(index: int, send) -> int:
    if index == 2:
        raise ValueError(f"run {index} is broken")
    return index


def _dies_on_one(index: int, send) -> int:
    if index == 1:
        send(RunEvent.of(index, Stage.TRAINING))
        os._exit(3)
    return index


def test_results_come_back_in_order_and_events_reach_the_parent() -> None:
    events: list[RunEvent] = []
    assert run_in_processes(_square, 5, jobs=2, on_event=events.append) == [0, 1, 4, 9, 16]
    assert sorted(e.index for e in events) == [0, 1, 2, 3, 4]
    assert all(e.metrics == {"step": float(e.index)} for e in events)  # only the metrics the bar shows travel


def test_a_runs_error_stops_the_comparison_with_that_error() -> None:
    with pytest.raises(ValueError, match="run 2 is broken"):
        run_in_processes(_fails_on_two, 4, jobs=2, on_event=lambda event: None)


def test_a_worker_that_dies_is_named_instead_of_hanging() -> None:
    with pytest.raises(RuntimeError, match=r"died while on run 1 with exit code 3"):
        run_in_processes(_dies_on_one, 3, jobs=1, on_event=lambda event: None)
