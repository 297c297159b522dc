"""End to end: a few dozen seeded GRPO steps on the warmed-up tiny model raise arithmetic accuracy."""

from __future__ import annotations

import json

from kelvin.config import load_config
from kelvin.rl.trainer import Trainer


def test_rl_raises_accuracy(tmp_path, warm_model_dir):
    config = load_config(
        "recipes/arithmetic-fixed.yaml",
        [
            "trainer.steps=20",
            "trainer.prompts_per_step=32",
            "sampling.num_generations=8",
            "trainer.micro_batch_size=128",
            "optim.learning_rate=1e-4",
            "task.eval_size=256",
            "trainer.eval_every=0",
            "trainer.save_every=0",
            "trainer.tensorboard=false",
            "trainer.seed=3",
        ],
    )
    summary = Trainer(config, tmp_path, quiet=True).train(progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    early = sum(r["reward"] for r in rows[1:4]) / 3
    late = sum(r["reward"] for r in rows[-5:]) / 5
    # Measured: 0.44 -> 0.73 held-out (T=1) in 20 steps. 256 held-out prompts give a standard error of ~0.03 near
    # 0.5, so +0.15 is 5 sigma from no change yet half the measured gain.
    assert summary["accuracy_after"] - summary["accuracy_before"] > 0.15, summary
    assert late > early + 0.1, (early, late)
