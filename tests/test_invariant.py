"""DESIGN section 1: the temperature that sampled a token is the only one any later log-probability uses.

Sample, then recompute every quantity through the loss code path (policy, old, reference, entropy) from the
stored tensors; the importance ratio must be 1 on every token, and the entropy must equal the entropy of
softmax(z / tau) computed independently in NumPy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kelvin.controllers.base import ScoringRequest, TemperatureController, TokenContext, TokenTemperature
from kelvin.controllers.fixed import FixedController
from kelvin.rl.logprobs import token_logprobs_and_entropy
from kelvin.rl.policy_pass import completion_logits, policy_pass, trim
from kelvin.rl.sampling import SamplingSettings, sample


class ZigZagController(TemperatureController):
    """A test controller whose tau changes along the sequence and differs between rows."""

    name = "zigzag"

    def token_temperature(self, ctx: TokenContext) -> TokenTemperature:
        rows = torch.arange(ctx.logits.shape[0], dtype=torch.float32)
        tau = 0.5 + 0.1 * ((ctx.position + rows) % 9)
        return TokenTemperature(tau)


def _sample(model, prompts, controller, **kw):
    ids, mask = prompts
    settings = SamplingSettings(max_new_tokens=24, eos_ids=[2], pad_id=0, **kw)
    return sample(model, ids, mask, controller, settings, generator=torch.Generator().manual_seed(1))


def _numpy_entropy(logits: np.ndarray, tau: np.ndarray) -> np.ndarray:
    z = logits / tau[..., None]
    z = z - z.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    return -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)


@pytest.mark.parametrize(
    "controller", [FixedController(0.6), FixedController(1.4), ZigZagController()], ids=["T0.6", "T1.4", "per-token"]
)
def test_ratio_is_one_on_every_token(tiny_model, prompts, controller):
    r = _sample(tiny_model, prompts, controller)
    mask = r.completion_mask.bool()
    assert mask.sum() > 20
    if isinstance(controller, ZigZagController):
        assert len(torch.unique(r.temperature[mask])) > 3  # tau really varies along the sequence
    out = policy_pass(tiny_model, trim(r), ScoringRequest())
    width = out.logprobs.shape[1]
    ratio = torch.exp(out.logprobs.detach() - r.behaviour_logprobs[:, :width])
    assert torch.allclose(ratio[mask[:, :width]], torch.ones(()), atol=1e-5)
    # the reference path (a frozen copy of the same weights) gives the same numbers
    logits, _ = completion_logits(tiny_model, trim(r))
    ref, _ = token_logprobs_and_entropy(logits, trim(r).completion_ids, trim(r).temperature, with_entropy=False)
    assert torch.allclose(ref[mask[:, :width]], r.behaviour_logprobs[:, :width][mask[:, :width]], atol=1e-5)
    # entropy equals the entropy of softmax(z / tau) computed independently
    expected = _numpy_entropy(logits.detach().double().numpy(), trim(r).temperature.double().numpy())
    got = out.entropy.detach().double().numpy()
    np.testing.assert_allclose(got[mask[:, :width].numpy()], expected[mask[:, :width].numpy()], atol=1e-4)


def test_ratio_is_one_with_top_p_and_top_k_replayed(tiny_model, prompts):
    r = _sample(tiny_model, prompts, ZigZagController(), top_p=0.8, top_k=20)
    mask = r.completion_mask.bool()
    out = policy_pass(tiny_model, trim(r), ScoringRequest())
    width = out.logprobs.shape[1]
    assert torch.isfinite(out.logprobs[mask[:, :width]]).all()
    ratio = torch.exp(out.logprobs.detach() - r.behaviour_logprobs[:, :width])
    assert torch.allclose(ratio[mask[:, :width]], torch.ones(()), atol=1e-5)


def test_wrong_temperature_would_be_caught(tiny_model, prompts):
    """The check above can fail: recomputing at T=1 instead of the recorded 0.6 breaks the ratio."""
    r = _sample(tiny_model, prompts, FixedController(0.6))
    r1 = trim(r)
    r1.temperature = torch.ones_like(r1.temperature)
    out = policy_pass(tiny_model, r1, ScoringRequest())
    width = out.logprobs.shape[1]
    gap = (out.logprobs.detach() - r.behaviour_logprobs[:, :width]).abs()[r.completion_mask[:, :width].bool()]
    assert gap.max() > 1e-2


def test_batch_and_single_row_sampling_agree_on_logprobs(tiny_model, prompts):
    """Left padding must not change a row's log-probs: the padded batch matches an unpadded forward."""
    r = _sample(tiny_model, prompts, FixedController(1.0))
    row = 1
    n_prompt = int(r.prompt_mask[row].sum())
    n_comp = int(r.completion_mask[row].sum())
    ids = torch.cat([r.prompt_ids[row, -n_prompt:], r.completion_ids[row, :n_comp]]).unsqueeze(0)
    logits = tiny_model(input_ids=ids).logits[0, n_prompt - 1 : -1]
    lp = torch.log_softmax(logits.double(), -1).gather(-1, r.completion_ids[row, :n_comp, None]).squeeze(-1)
    np.testing.assert_allclose(lp.detach().numpy(), r.behaviour_logprobs[row, :n_comp].double().numpy(), atol=1e-4)
