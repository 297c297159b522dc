"""The trainer's reference-model path (issue 11): with loss.beta > 0 the trainer loads a frozen reference and the
loss's reference log-probs are log_softmax(z_ref / tau)[y] at the *recorded* tau, checked here against a plain
forward pass of the reference and NumPy, through `Trainer.update_policy` itself (not by repeating its calls)."""

from __future__ import annotations

import numpy as np
import torch
from run_settings import TWO_STEP_RUN

import kelvin.rl.trainer as trainer_module
from kelvin.config import load_config
from kelvin.rl.trainer import Trainer

OPTIONS = [
    *TWO_STEP_RUN,
    "trainer.tensorboard=false",
    "trainer.log_completions=0",
    "trainer.micro_batch_size=8",  # 16 rows: two micro-batches, each with its own reference call
    "loss.beta=0.1",
    "sampling.temperature=0.7",  # tau != 1, so a reference at the wrong temperature cannot pass
]


def numpy_reference(model, micro) -> np.ndarray:
    """log_softmax(z / tau)[y] from one plain forward of prompt + completion, in float64."""
    ids = torch.cat([micro.prompt_ids, micro.completion_ids], dim=1)
    mask = torch.cat([micro.prompt_mask, micro.completion_mask], dim=1)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits.double().numpy()
    start, length = micro.prompt_ids.shape[1] - 1, micro.completion_ids.shape[1]
    z = logits[:, start : start + length] / micro.temperature.double().numpy()[..., None]
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.take_along_axis(logp, micro.completion_ids.numpy()[..., None], -1)[..., 0]


def test_reference_logprobs_through_the_trainer(tmp_path, warm_model_dir, monkeypatch):
    trainer = Trainer(load_config(None, OPTIONS), tmp_path, quiet=True)
    assert trainer.reference is not None and trainer.reference is not trainer.policy
    assert not any(p.requires_grad for p in trainer.reference.parameters())
    seen = []
    real = trainer_module.reference_logprobs

    def spy(reference, policy, micro):
        out = real(reference, policy, micro)
        seen.append((micro, out))
        return out

    monkeypatch.setattr(trainer_module, "reference_logprobs", spy)
    first = trainer.train_step()
    with torch.no_grad():  # move the policy off the frozen reference (a tiny-batch update may have zero advantages)
        generator = torch.Generator().manual_seed(0)
        for p in trainer.policy.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    second = trainer.train_step()
    assert len(seen) == 4  # two micro-batches per step
    for micro, got in seen:
        m = micro.completion_mask.bool().numpy()
        assert (micro.temperature.numpy()[m] == np.float32(0.7)).all()
        np.testing.assert_allclose(got.numpy()[m], numpy_reference(trainer.reference, micro)[m], atol=1e-4)
    # The reference is the starting policy: before the first update the k3 KL of every token is 0; after it, not.
    assert first["kl"] < 1e-6
    assert second["kl"] > 1e-5
