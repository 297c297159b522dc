"""The engine-mismatch correction (kelvin.rl.sampler_correction) against an independent NumPy transcription of TRL
1.16's `vllm_importance_sampling_*` rule, and its place in the loss."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from kelvin.config import ConfigError, KelvinConfig, load_config, validate
from kelvin.rl.grpo import LossInputs, LossSettings, grpo_loss
from kelvin.rl.sampler_correction import MODES, SamplerCorrection, logprob_gap_metrics


def trl_weights(old: np.ndarray, sampler: np.ndarray, mask: np.ndarray, mode: str, lo, hi) -> np.ndarray:
    """TRL 1.16, GRPOTrainer._generate_and_score_completions, written out with NumPy loops."""
    rows, width = old.shape
    diff = (old - sampler) * mask
    if mode.startswith("sequence"):
        out = np.zeros((rows, 1))
        for b in range(rows):
            out[b, 0] = math.exp(sum(diff[b, t] for t in range(width)))
    else:
        out = np.exp(diff)
    for idx in np.ndindex(out.shape):
        r = out[idx]
        if mode.endswith("truncate"):
            r = r if lo is None else max(r, lo)
            r = r if hi is None else min(r, hi)
        elif (lo is not None and r < lo) or (hi is not None and r > hi):
            r = 0.0
        out[idx] = r
    return out


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(6, 5, generator=g, dtype=torch.float64) * 3
    sampler = old + torch.randn(6, 5, generator=g, dtype=torch.float64) * 0.6  # engines disagree, some a lot
    mask = torch.ones(6, 5, dtype=torch.float64)
    mask[1, 3:] = 0
    mask[4, 1:] = 0
    return old, sampler, mask


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("lo", "hi"), [(None, 3.0), (0.5, 2.0), (None, None)])
def test_weights_equal_trls_rule(batch, mode, lo, hi):
    old, sampler, mask = batch
    got = SamplerCorrection(mode, lo, hi).weights(old, sampler, mask)
    want = trl_weights(old.numpy(), sampler.numpy(), mask.numpy(), mode, lo, hi)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_the_fixture_exercises_both_bounds(batch):
    """Otherwise the test above would pass with the bounds ignored."""
    old, sampler, mask = batch
    raw = SamplerCorrection("token_truncate", None, None).weights(old, sampler, mask)
    assert (raw[mask.bool()] > 2.0).any() and (raw[mask.bool()] < 0.5).any()
    seq = SamplerCorrection("sequence_truncate", None, None).weights(old, sampler, mask)
    assert (seq > 3.0).any() or (seq < 1 / 3).any()


@pytest.mark.parametrize("mode", MODES)
def test_identity_when_the_engines_agree(batch, mode):
    old, _, mask = batch
    w = SamplerCorrection(mode, 0.5, 3.0).weights(old, old.clone(), mask)
    assert torch.equal(w, torch.ones_like(w))


def test_the_loss_is_unchanged_by_unit_weights_and_scaled_per_token_otherwise(batch):
    old, sampler, mask = batch
    torch.manual_seed(1)
    logprobs = (old + 0.05 * torch.randn_like(old)).requires_grad_(True)
    adv = torch.tensor([1.0, -0.5, 0.3, -1.2, 0.8, 0.0], dtype=torch.float64)
    s = LossSettings(loss_type="bnpo")
    plain, _ = grpo_loss(LossInputs(logprobs, old, adv, mask), s)
    ones, _ = grpo_loss(LossInputs(logprobs, old, adv, mask, sampler_weights=torch.ones_like(old)), s)
    assert torch.equal(plain, ones)
    w = SamplerCorrection("token_truncate", None, 3.0).weights(old, sampler, mask)
    weighted, _ = grpo_loss(LossInputs(logprobs, old, adv, mask, sampler_weights=w), s)
    # independently: bnpo = sum over tokens of w * clipped surrogate / tokens
    ratio = torch.exp(logprobs - old)
    surrogate = -torch.min(ratio * adv[:, None], ratio.clamp(0.8, 1.2) * adv[:, None])
    want = (surrogate * w * mask).sum() / mask.sum()
    torch.testing.assert_close(weighted, want)
    assert not torch.isclose(weighted, plain)


def test_gap_and_ratio_metrics_reduce_over_processes(batch):
    old, sampler, mask = batch
    halves = [slice(0, 3), slice(3, 6)]

    def gather_two(x: torch.Tensor) -> torch.Tensor:  # as if a second process held the other half
        other = torch.cat(calls.pop(0))
        return torch.cat([x, other.to(x.dtype)])

    correction = SamplerCorrection("token_mask", None, 3.0)
    a, b = halves
    calls = [[logprob_gap_local(old[b], sampler[b], mask[b])]]
    gap = logprob_gap_metrics(old[a], sampler[a], mask[a], gather_two)
    diff = ((old - sampler).abs() * mask).numpy()
    assert gap["sampler_logprob_gap/max"] == pytest.approx(diff.max())
    assert gap["sampler_logprob_gap/mean"] == pytest.approx(diff.sum() / mask.sum().item())
    w_b = correction.weights(old[b], sampler[b], mask[b])[mask[b].bool()]
    calls = [[torch.stack([w_b.min(), w_b.mean(), w_b.max()]).float().unsqueeze(0)]]
    ratio = correction.metrics(old[a], sampler[a], mask[a], gather_two)
    w = correction.weights(old, sampler, mask)[mask.bool()].numpy()
    assert ratio["sampling/importance_sampling_ratio/min"] == pytest.approx(w.min(), rel=1e-6)
    assert ratio["sampling/importance_sampling_ratio/max"] == pytest.approx(w.max(), rel=1e-6)
    assert ratio["sampling/importance_sampling_ratio/min"] == 0.0  # masked tokens count, as in TRL


def logprob_gap_local(old, sampler, mask):
    gap = (old - sampler).abs()
    return torch.stack([(gap * mask).sum(), mask.sum(), (gap * mask).max()]).double().unsqueeze(0)


def test_only_another_engine_gets_the_correction():
    c = KelvinConfig()
    assert SamplerCorrection.from_config(c.sampling) is None
    c.sampling.engine = "vllm"
    assert SamplerCorrection.from_config(c.sampling) == SamplerCorrection("sequence_mask", None, 3.0)  # TRL's defaults
    c.sampling.vllm_importance_sampling_correction = False
    assert SamplerCorrection.from_config(c.sampling) is None


def test_trls_old_cap_name_sets_clip_max_and_bad_bounds_are_refused():
    c = KelvinConfig()
    c.sampling.vllm_importance_sampling_cap = 2.0
    validate(c)
    assert c.sampling.vllm_importance_sampling_clip_max == 2.0
    c = KelvinConfig()
    c.sampling.vllm_importance_sampling_clip_min = 4.0
    with pytest.raises(ConfigError, match=re.escape("vllm_importance_sampling_clip_min=4.0 must be below")):
        validate(c)
    with pytest.raises(ConfigError, match="vllm_importance_sampling_mode"):
        load_config(None, ["sampling.vllm_importance_sampling_mode=token"])
    with pytest.raises(ConfigError, match=re.escape("trainer.sharding='fsdp2'")):
        load_config(None, ["sampling.engine=vllm", "trainer.sharding=fsdp2"])
    with pytest.raises(ConfigError, match=re.escape("vllm_tensor_parallel_size=2 with trainer.num_processes=2")):
        load_config(None, ["sampling.engine=vllm", "sampling.vllm_tensor_parallel_size=2", "trainer.num_processes=2"])


@pytest.mark.parametrize("controller", ["introspective", "ead", "edt"])
def test_per_token_controllers_are_refused_before_vllm_is_started_or_imported(controller, tmp_path):
    """The refusal names the fix; it happens before vLLM is imported, so it holds without vLLM installed."""
    from kelvin.rl.trainer import Trainer

    config = load_config(None, ["sampling.engine=vllm", f"controller.name={controller}", "trainer.steps=1"])
    with pytest.raises(ValueError, match=re.escape("sampling.engine=kelvin")) as err:
        Trainer(config, tmp_path / "run", quiet=True)
    assert f"controller.name={controller}" in str(err.value)
