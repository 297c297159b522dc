"""Two CPU processes (gloo) train together, started by `kelvin train trainer.num_processes=2`.

Every claim is read from the run's own output: `num_processes` in summary.json and in every metrics row, and each
process's own state file in the checkpoints (`rank-000.pt`, `rank-001.pt`). Runs are tiny (1M model, 3-4 steps, 8
prompts x 4 completions, one thread per process).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kelvin.config import load_config
from kelvin.rl.checkpoint import CheckpointMismatch, latest_checkpoint
from kelvin.rl.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
BASE = [
    "trainer.prompts_per_step=8",
    "sampling.num_generations=4",
    "trainer.micro_batch_size=8",
    "sampling.max_completion_length=32",
    "task.eval_size=16",
    "trainer.tensorboard=false",
    "trainer.num_processes=2",
]
CANDIDATES = {0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5}


def _command(out: Path, overrides: list[str], resume: bool = False) -> list[str]:
    tail = ["--resume"] if resume else []
    return [sys.executable, "-m", "kelvin.cli", "train", *BASE, *overrides, "--output-dir", str(out), *tail]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _train(out: Path, overrides: list[str], resume: bool = False) -> list[dict]:
    result = subprocess.run(
        _command(out, overrides, resume), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(row["num_processes"] == 2 for row in rows)
    return rows


def _process_tree(root: int) -> list[int]:
    """`root` and all its descendants (torch's launcher starts each worker in its own session, so killing the
    launcher's process group would leave the workers running)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(parents.get(pid, []))
    return tree


def _untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("time/")}


def _rank_states(checkpoint: Path) -> list[dict]:
    files = sorted(checkpoint.glob("rank-*.pt"))
    assert [f.name for f in files] == ["rank-000.pt", "rank-001.pt"]
    return [torch.load(f, weights_only=False) for f in files]


@pytest.mark.slow
def test_tampo_draws_together_and_batch_scaling_uses_the_global_batch(tmp_path, warm_model_dir):
    out = tmp_path / "tampo"
    overrides = ["controller.name=tampo", "loss.scale_rewards=batch", "trainer.steps=3", "trainer.save_every=1"]
    rows = _train(out, [*overrides, "trainer.keep_last=3", "trainer.log_completions=16"])
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # only the main process logs
    for row in rows[1:]:
        # temperature/std pools the tokens of both processes: 0 means both sampled at the same TAMPO draw
        assert row["temperature/std"] < 1e-6
        assert row["temperature/chosen"] in CANDIDATES
        # the meta-update saw all 8 prompts x 4 samples of both processes (gathered), not one process's 16
        assert row["temperature/meta_update_rows"] == 32
    for step in (1, 2, 3):
        a, b = _rank_states(out / "checkpoints" / f"step-{step:06d}")
        # the meta-policy (EMA, distribution, its shared draw generator) is the same on both processes ...
        assert torch.equal(a["controller"]["ema"], b["controller"]["ema"])
        assert torch.equal(a["controller"]["distribution"], b["controller"]["distribution"])
        assert torch.equal(a["controller"]["generator"], b["controller"]["generator"])
        # ... while each process keeps its own sampling stream (they sample different completions)
        assert not torch.equal(a["generator"], b["generator"])
    assert not torch.equal(a["controller"]["ema"], torch.zeros_like(a["controller"]["ema"]))  # it did update

    # scale_rewards=batch: A = (r - group mean) / (std of all 32 rewards of both processes + 1e-4). Rewards are 0/1,
    # so that std follows from the global mean reward of the metrics row; rank 0's 16 logged rows must use it.
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    local_differs = False
    for row in rows[1:]:
        mine = [c for c in completions if c["step"] == row["step"]]
        assert len(mine) == 16
        rewards = torch.tensor([c["reward"] for c in mine], dtype=torch.float64)
        assert set(rewards.tolist()) <= {0.0, 1.0}
        p, n = row["reward"], 32
        global_std = math.sqrt(n * p * (1 - p) / (n - 1))
        group_mean = rewards.view(-1, 4).mean(dim=1).repeat_interleave(4)
        expected = (rewards - group_mean) / (global_std + 1e-4)
        got = torch.tensor([c["advantage"] for c in mine], dtype=torch.float64)
        assert torch.allclose(got, expected, atol=1e-5), (row["step"], got, expected)
        local_differs |= abs(float(rewards.std()) - global_std) > 1e-3
    assert local_differs, "rank 0's own reward std equalled the global one at every step: the check proved nothing"


@pytest.mark.slow
def test_introspective_head_and_dynamic_sampling_stay_in_lockstep(tmp_path, warm_model_dir):
    out = tmp_path / "intro"
    overrides = [
        "controller.name=introspective",
        "loss.dynamic_sampling=true",
        "loss.dynamic_sampling_max_rounds=3",
        "trainer.steps=3",
        "trainer.save_every=1",
        "trainer.keep_last=3",
    ]
    rows = _train(out, overrides)
    rounds = [r["dynamic_sampling/rounds"] for r in rows[1:]]
    assert max(rounds) > 1, f"no step sampled a second round ({rounds}): lockstep was not exercised"
    # the data position advances by the whole prompts_per_step once per round, on every process alike
    assert rows[-1]["data_position"] == 8 * sum(rounds)
    first = None
    for step in (1, 2, 3):
        a, b = _rank_states(out / "checkpoints" / f"step-{step:06d}")
        assert a["data_position"] == b["data_position"] == rows[step]["data_position"]
        for name, weight in a["controller"]["head"].items():
            assert torch.equal(weight, b["controller"]["head"][name]), name
        first = first or a["controller"]["head"]
    last = a["controller"]["head"]
    assert any(not torch.equal(first[k], last[k]) for k in first), "the head never trained"
    assert (out / "model" / "config.json").is_file()


@pytest.mark.slow
def test_two_processes_resume_exactly_and_refuse_another_process_count(tmp_path, warm_model_dir):
    # T = 2 so that sampling really depends on each process's stream: at T = 1 the warmed-up model is nearly
    # deterministic on arithmetic, and restoring the wrong stream would go unnoticed
    overrides = ["trainer.steps=4", "trainer.save_every=2", "optim.learning_rate=5e-4", "sampling.temperature=2.0"]
    straight = tmp_path / "straight"
    a = _train(straight, overrides)

    resumed = tmp_path / "resumed"
    process = subprocess.Popen(
        _command(resumed, overrides),
        cwd=REPO,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    marker = resumed / "checkpoints" / "step-000002" / "COMPLETE"
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    for pid in _process_tree(process.pid):  # as if the machine died: launcher, agent and both workers, in step 3
        os.kill(pid, signal.SIGKILL)
    process.wait()
    assert latest_checkpoint(resumed / "checkpoints").name == "step-000002", "the kill came too late"

    b = _train(resumed, overrides, resume=True)
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    for row_a, row_b in zip(a, b):
        assert _untimed(row_a) == _untimed(row_b), f"step {row_a['step']} differs"
    wa = load_file(straight / "checkpoints" / "step-000004" / "model.safetensors")
    wb = load_file(resumed / "checkpoints" / "step-000004" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    start = load_file(warm_model_dir / "model.safetensors")
    assert any(not torch.equal(wa[k], start[k]) for k in start if k in wa)  # it really trained

    # one process may not continue what two started: its streams would not be the ones the run had
    config = load_config(None, [*BASE, *overrides, "trainer.num_processes=1"])
    with pytest.raises(CheckpointMismatch, match=r"written by 2 process\(es\) and this run has 1"):
        Trainer(config, resumed, quiet=True).train(resume=True, progress=False)
