"""Data-parallel training with accelerate: two CPU processes (gloo) train together and agree on the temperature."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_processes_train_share_tampo_draws_and_sample_in_lockstep(tmp_path, warm_model_dir):
    out = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--cpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "kelvin.cli",
        "train",
        "recipes/arithmetic-fixed.yaml",
        "trainer.steps=3",
        "trainer.prompts_per_step=8",
        "sampling.num_generations=4",
        "trainer.micro_batch_size=8",
        "task.eval_size=16",
        "trainer.tensorboard=false",
        "controller.name=tampo",
        "loss.dynamic_sampling=true",  # processes must agree on how many extra rounds to sample
        "--output-dir",
        str(out),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # only the main process logs
    for row in rows[1:]:
        # temperature/std pools the tokens of both processes: 0 means both sampled at the same TAMPO draw
        assert row["temperature/std"] < 1e-6
        assert row["sampler_logprob_gap/max"] < 1e-4
        # the meta-update saw all 8 prompts x 4 samples of both processes (gathered), not one process's 16
        assert row["temperature/meta_update_rows"] == 32
