"""A killed `kelvin compare --jobs 2` leaves nothing running (Linux: reads /proc).

A killed comparison once left its workers training and writing into the run folders, and the rerun that resumed
them raced with them. The comparison here trains two long runs at once; once both have logged a step, the parent is
killed (SIGKILL; SIGTERM, which `pkill` sends) and every process that descended from it (workers, reward workers,
the resource tracker) must be gone within seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PDEATHSIG is Linux's")

RECIPE = {
    "name": "killed",
    "seeds": [0],
    "evaluation": {"temperatures": [1.0], "k": 1, "size": 4, "batch_size": 64},
    "base": {
        "task": {"eval_size": 4},
        "sampling": {"num_generations": 4, "max_completion_length": 24},
        "trainer": {
            "steps": 100000,  # far longer than the test: the runs are in flight when the parent dies
            "prompts_per_step": 4,
            "micro_batch_size": 16,
            "eval_every": 0,
            "save_every": 0,
            "tensorboard": False,
            "log_completions": 0,
            "torch_threads": 1,
        },
    },
    "arms": {
        "fixed-1.0": {"controller": {"name": "fixed"}, "sampling": {"temperature": 1.0}},
        "fixed-0.8": {"controller": {"name": "fixed"}, "sampling": {"temperature": 0.8}},
    },
}


def _processes() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, start time) of every process now; the start time tells a reused pid apart."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited while we looked
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ", which may hold spaces
        table[int(entry.name)] = (int(fields[1]), fields[0], fields[19])
    return table


def _descendants(root: int) -> dict[int, str]:
    """pid -> start time of every process below `root`."""
    table = _processes()
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, started) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = started
                frontier.append(pid)
    return found


def _still_running(recorded: dict[int, str]) -> list[int]:
    """The recorded processes still running (a zombie is not: it only waits for someone to read its exit status)."""
    running = {pid: started for pid, (_, state, started) in _processes().items() if state != "Z"}
    return [pid for pid, started in recorded.items() if running.get(pid) == started]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_comparison_leaves_no_process_behind(tmp_path, warm_model_dir, how):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "kelvin.cli", "compare", str(recipe), "--output-dir", str(out), "--jobs", "2"]
    log = (tmp_path / "compare.log").open("w")
    # Its own process group, so the cleanup below can stop whatever a failing run leaves behind.
    parent = subprocess.Popen([*command, "--no-progress"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    recorded: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while len([p for p in out.glob("runs/*/seed-0/metrics.jsonl") if p.stat().st_size > 0]) < 2:
            assert parent.poll() is None, (tmp_path / "compare.log").read_text()
            assert time.monotonic() < deadline, "the two runs did not start training"
            time.sleep(0.2)
        recorded = _descendants(parent.pid)
        assert len(recorded) >= 3, recorded  # two workers and the resource tracker (at least)

        parent.send_signal(how)
        code = parent.wait(timeout=15)
        # SIGTERM: the comparison stops its workers itself and exits as a terminated process would (128 + 15).
        assert code == (-signal.SIGKILL if how == signal.SIGKILL else 143), code
        killed = time.monotonic()
        while (left := _still_running(recorded)) and time.monotonic() < killed + 15:
            time.sleep(0.1)
        assert not left, f"still running 15 s after the comparison was killed: {left}"
    finally:
        for pid in _still_running(recorded):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait()
        log.close()
