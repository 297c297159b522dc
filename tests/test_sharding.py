"""FSDP2 (`trainer.sharding=fsdp2`) on two CPU processes (gloo): it trains like DDP, resumes, saves a plain model.

Sampling runs with the full parameters gathered (kelvin.rl.sharding.full_parameters): the two processes' completions
end at different lengths, which would deadlock a sharded forward per decoded token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kelvin.models.loading import load_pretrained

REPO = Path(__file__).resolve().parents[1]
BASE = [
    "trainer.prompts_per_step=4",
    "sampling.num_generations=4",
    "trainer.micro_batch_size=4",  # 2 micro-batches per process: gradients accumulate across reduce-scatters
    "sampling.max_completion_length=24",
    "sampling.temperature=1.5",  # completions of uneven length on the two processes
    "task.eval_size=8",
    "trainer.tensorboard=false",
    "trainer.num_processes=2",
    "trainer.save_every=1",
    "optim.learning_rate=5e-4",
]


def _train(out: Path, overrides: list[str], resume: bool = False) -> list[dict]:
    command = [sys.executable, "-m", "kelvin.cli", "train", *BASE, *overrides, "--output-dir", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        command + (["--resume"] if resume else []), cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["num_processes"] == 2
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_fsdp2_trains_like_ddp_resumes_and_saves_a_plain_model(tmp_path, warm_model_dir):
    sharded = _train(tmp_path / "fsdp2", ["trainer.steps=2", "trainer.sharding=fsdp2"])
    ddp = _train(tmp_path / "ddp", ["trainer.steps=2", "trainer.sharding=none"])
    # step 1 samples from the same weights: same rows, and the same update up to float summation order
    for key in ("reward", "completion_length", "temperature/mean", "data_position"):
        assert sharded[1][key] == ddp[1][key], key
    for key in ("loss", "grad_norm", "entropy", "sampler_logprob_gap/max"):
        assert sharded[1][key] == pytest.approx(ddp[1][key], rel=1e-4, abs=1e-6), key
    assert sharded[1]["completions/clipped_ratio"] < 1  # some completions ended early: uneven decoding lengths

    # the final model is a plain save_pretrained folder, equal to the last checkpoint's gathered weights
    model, _ = load_pretrained(tmp_path / "fsdp2" / "model")
    final = load_file(tmp_path / "fsdp2" / "checkpoints" / "step-000002" / "model.safetensors")
    for name, weight in model.state_dict().items():
        if name in final:
            assert torch.equal(weight, final[name]), name
    start = load_file(warm_model_dir / "model.safetensors")
    assert any(not torch.equal(final[k], start[k]) for k in start if k in final)

    # resume a 1-step sharded run to step 2: the same step-2 row and bitwise the same weights as the straight run
    resumed = tmp_path / "resumed"
    _train(resumed, ["trainer.steps=1", "trainer.sharding=fsdp2"])
    rows = _train(resumed, ["trainer.steps=2", "trainer.sharding=fsdp2"], resume=True)
    untimed = [{k: v for k, v in row.items() if not k.startswith("time/")} for row in (rows[-1], sharded[-1])]
    assert untimed[0] == untimed[1]
    again = load_file(resumed / "checkpoints" / "step-000002" / "model.safetensors")
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)
