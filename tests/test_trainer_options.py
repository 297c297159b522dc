"""Every loss/sampling option of the trainer runs a real step on the tiny model and keeps the invariant."""

from __future__ import annotations

import json
import math

import pytest
from run_settings import TWO_STEP_RUN

from kelvin.config import load_config
from kelvin.rl.trainer import Trainer

SMALL = [*TWO_STEP_RUN, "trainer.tensorboard=false", "trainer.log_completions=0", "optim.learning_rate=1e-4"]

OPTIONS = [
    ["loss.loss_type=grpo"],
    ["loss.loss_type=dr_grpo"],
    ["loss.loss_type=bnpo", "loss.num_iterations=2"],
    ["loss.importance_sampling_level=sequence", "loss.num_iterations=2"],
    ["loss.epsilon_high=0.28", "loss.entropy_coef=0.01"],
    ["loss.scale_rewards=batch"],
    ["loss.scale_rewards=none", "loss.mask_truncated_completions=true"],
    ["sampling.top_p=0.9", "sampling.top_k=10"],
    ["sampling.cache=dynamic", "sampling.batch_size=8"],
    ["optim.lr_scheduler=cosine", "optim.min_lr_ratio=0.1", "optim.warmup_steps=1"],
]


@pytest.mark.parametrize("options", OPTIONS, ids=[" ".join(o) for o in OPTIONS])
def test_option_runs_and_keeps_the_invariant(tmp_path, warm_model_dir, options):
    Trainer(load_config(None, [*SMALL, *options]), tmp_path, quiet=True).train(progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()][1:]
    assert len(rows) == 2
    for row in rows:
        assert math.isfinite(row["loss"]) and math.isfinite(row["grad_norm"])
        assert row["sampler_logprob_gap/max"] < 1e-4


def test_cosine_schedule_reaches_the_minimum_ratio(tmp_path, warm_model_dir):
    config = load_config(None, [*SMALL, "trainer.steps=3", "optim.lr_scheduler=cosine", "optim.min_lr_ratio=0.1"])
    Trainer(config, tmp_path, quiet=True).train(progress=False)
    lrs = [json.loads(line)["learning_rate"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()[1:]]
    expected = [1e-4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 3))) for s in range(3)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_dynamic_sampling_keeps_only_informative_groups(tmp_path, warm_model_dir):
    config = load_config(None, [*SMALL, "loss.dynamic_sampling=true", "loss.dynamic_sampling_max_rounds=3"])
    trainer = Trainer(config, tmp_path, quiet=True)
    trainer.controller.begin_step(0)
    record = trainer.sample_batch()
    assert record.rewards.numel() == 16  # the batch keeps its shape
    groups = record.rewards.view(-1, 4)
    informative = (groups.max(dim=1).values != groups.min(dim=1).values).sum().item()
    # every informative group found comes first; uninformative groups only top up a batch that could not be filled
    spread = [(g.max() != g.min()).item() for g in groups]
    assert spread == sorted(spread, reverse=True)
    assert informative == 4 or record.sampling_rounds == 4
    assert trainer.data_position >= 4 * (record.sampling_rounds - 1)
