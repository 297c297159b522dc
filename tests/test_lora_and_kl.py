"""LoRA (peft) training and the KL term: only adapters move, the base model is the reference, KL starts at 0."""

from __future__ import annotations

import json

import torch
from run_settings import TWO_STEP_RUN
from safetensors.torch import load_file

from kelvin.config import load_config
from kelvin.rl.trainer import Trainer

SMALL = [*TWO_STEP_RUN, "trainer.tensorboard=false", "optim.learning_rate=1e-2"]


def test_lora_trains_adapters_only_and_uses_base_as_reference(tmp_path, warm_model_dir):
    config = load_config(None, [*SMALL, "model.lora_r=4", "loss.beta=0.1"])
    trainer = Trainer(config, tmp_path, quiet=True)
    trainable = {n for n, p in trainer.policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    frozen_before = {n: p.detach().clone() for n, p in trainer.policy.named_parameters() if not p.requires_grad}
    trainer.train(progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[1]["kl"] == 0.0 or abs(rows[1]["kl"]) < 1e-6  # adapters start as the identity (B = 0)
    assert rows[2]["kl"] > 0  # after one update the policy differs from the base
    for n, p in trainer.policy.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), n
    merged = load_file(tmp_path / "model" / "model.safetensors")
    base = load_file(warm_model_dir / "model.safetensors")
    assert merged.keys() == base.keys()  # the saved model is a plain merged model
    assert any(not torch.equal(merged[k], base[k]) for k in base)


def test_full_model_kl_uses_a_frozen_reference(tmp_path, warm_model_dir):
    config = load_config(None, [*SMALL, "loss.beta=0.1"])
    trainer = Trainer(config, tmp_path, quiet=True)
    assert trainer.reference is not None and not any(p.requires_grad for p in trainer.reference.parameters())
    trainer.train(progress=False)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[1]["kl"]) < 1e-6 and rows[2]["kl"] > 0
