"""Checkpoints are atomic and resume exactly: 6 steps straight == 3 steps, killed, resumed to 6."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from kelvin.config import load_config
from kelvin.rl.checkpoint import latest_checkpoint
from kelvin.rl.trainer import Trainer

OVERRIDES = [
    "trainer.steps=6",
    "trainer.prompts_per_step=8",
    "sampling.num_generations=4",
    "trainer.micro_batch_size=16",
    "sampling.max_completion_length=40",
    "task.eval_size=16",
    "trainer.save_every=3",
    "trainer.tensorboard=false",
    "loss.num_iterations=2",
    "optim.lr_scheduler=cosine",
    "optim.learning_rate=5e-4",
]


def _rows(folder):
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: {k: v for k, v in r.items() if not k.startswith("time/")} for r in rows}


class Killed(Exception):
    pass


@pytest.mark.parametrize("controller", ["fixed", "tampo"])
def test_kill_and_resume_gives_identical_rows_and_weights(tmp_path, warm_model_dir, controller):
    config = load_config(None, [*OVERRIDES, f"controller.name={controller}"])
    straight = tmp_path / "straight"
    Trainer(config, straight, quiet=True).train(progress=False)

    resumed = tmp_path / "resumed"
    trainer = Trainer(config, resumed, quiet=True)

    def die_after_step_4(metrics):
        if metrics["step"] == 4:  # checkpoint of step 3 is on disk; step 4 is logged but not checkpointed
            raise Killed

    with pytest.raises(Killed):
        trainer.train(progress=False, on_step=die_after_step_4)
    # a checkpoint that was being written when the process died must never be picked up
    (resumed / "checkpoints" / ".tmp-step-000005-abc").mkdir()
    (resumed / "checkpoints" / "step-000005").mkdir()
    assert latest_checkpoint(resumed / "checkpoints").name == "step-000003"

    Trainer(config, resumed, quiet=True).train(resume=True, progress=False)
    a, b = _rows(straight), _rows(resumed)
    assert sorted(b) == [0, 1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        assert a[step] == b[step], f"step {step} differs"
    wa = load_file(straight / "checkpoints" / "step-000006" / "model.safetensors")
    wb = load_file(resumed / "checkpoints" / "step-000006" / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the run really trained: weights moved away from the starting checkpoint
    w3 = load_file(resumed / "checkpoints" / "step-000006" / "model.safetensors")
    start = load_file(warm_model_dir / "model.safetensors")
    assert any(not torch.equal(w3[k], start[k]) for k in start if k in w3)


def test_keep_last_prunes_old_checkpoints(tmp_path, warm_model_dir):
    config = load_config(
        None, [*OVERRIDES, "trainer.steps=3", "trainer.save_every=1", "trainer.keep_last=2", "loss.num_iterations=1"]
    )
    Trainer(config, tmp_path, quiet=True).train(progress=False)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-000002", "step-000003"]
