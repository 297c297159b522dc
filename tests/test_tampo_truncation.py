"""TAMPO with truncated sampling (issue 11): the virtual likelihoods replay top-p / top-k at every candidate, so at
the temperature that sampled the batch they equal the sampler's own log-probabilities; and the token reduction."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kelvin.config import ConfigError, SamplingConfig
from kelvin.controllers.base import ScoringRequest
from kelvin.controllers.tampo import (
    OUTSIDE_SUPPORT_LOGPROB,
    TAMPOController,
    TAMPOControllerConfig,
    truncated_virtual_loglik,
    virtual_temperature_loglik,
)
from kelvin.rl.policy_pass import policy_pass, trim
from kelvin.rl.sampling import SamplingSettings, sample

CANDIDATES = [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5]


def truncated_numpy(logits, tokens, mask, temps, top_p, top_k):
    """Per position: divide by T, keep the top-k, then the smallest most-probable set reaching top_p, renormalise."""
    rows, length, vocab = logits.shape
    out = np.zeros((rows, len(temps)))
    for i in range(rows):
        for k, t in enumerate(temps):
            values = []
            for pos in range(length):
                if not mask[i, pos]:
                    continue
                z = logits[i, pos] / t
                order = np.argsort(-z, kind="stable")
                keep = np.zeros(vocab, dtype=bool)
                keep[order[: top_k or vocab]] = True
                p = np.exp(z - z.max()) * keep
                p = p / p.sum()
                mass = 0.0
                nucleus = np.zeros(vocab, dtype=bool)
                for j in order:
                    if not keep[j] or (mass >= top_p and nucleus.any()):
                        continue
                    nucleus[j] = True
                    mass += p[j]
                q = np.where(nucleus, np.exp(z - z.max()), 0.0)
                q = q / q.sum()
                values.append(np.log(q[tokens[i, pos]]) if q[tokens[i, pos]] > 0 else OUTSIDE_SUPPORT_LOGPROB)
            out[i, k] = np.mean(values) if values else 0.0
    return out


@pytest.mark.parametrize(("top_p", "top_k"), [(0.8, 0), (1.0, 5), (0.7, 8)])
def test_truncated_virtual_loglik_matches_numpy(top_p, top_k):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 6, 30, generator=gen) * 2
    # tokens drawn from the top 3 at T=1, so most are kept at most candidates and some fall out at cold ones
    tokens = torch.topk(logits, 3, dim=-1).indices[..., 2]
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 3:] = 0
    temps = [0.6, 1.0, 1.5]
    got = truncated_virtual_loglik(logits, tokens, mask, torch.tensor(temps), top_p, top_k)
    expected = truncated_numpy(logits.double().numpy(), tokens.numpy(), mask.numpy(), temps, top_p, top_k)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_sum_reduction_is_the_mean_times_the_token_count():
    gen = torch.Generator().manual_seed(1)
    logits, tokens = torch.randn(3, 5, 20, generator=gen), torch.randint(20, (3, 5), generator=gen)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    temps = torch.tensor([0.7, 1.0, 1.3])
    mean = virtual_temperature_loglik(logits, tokens, mask, temps)
    total = virtual_temperature_loglik(logits, tokens, mask, temps, reduction="sum")
    torch.testing.assert_close(total, mean * mask.sum(1, keepdim=True).float())
    truncated = truncated_virtual_loglik(logits, tokens, mask, temps, 0.9, 0, reduction="sum")
    truncated_mean = truncated_virtual_loglik(logits, tokens, mask, temps, 0.9, 0)
    torch.testing.assert_close(truncated, truncated_mean * mask.sum(1, keepdim=True).float())


@pytest.mark.parametrize(("top_p", "top_k"), [(1.0, 0), (0.8, 0), (1.0, 6)])
def test_virtual_loglik_at_the_sampling_temperature_equals_the_samplers(tiny_model, prompts, top_p, top_k):
    """Sample at TAMPO's T_s with truncation; score through the trainer's old-policy pass. The column of T_s must be
    the mean of the sampler's own log-probs (without the replay it was off by up to 0.22 nats/token)."""
    controller = TAMPOController(TAMPOControllerConfig(seed=0))
    controller.chosen_index = 2  # T_s = 0.8
    ids, mask = prompts
    settings = SamplingSettings(max_new_tokens=20, eos_ids=[2], pad_id=0, top_p=top_p, top_k=top_k)
    rollouts = sample(tiny_model, ids, mask, controller, settings, generator=torch.Generator().manual_seed(3))
    micro = trim(rollouts)
    out = policy_pass(tiny_model, micro, ScoringRequest(), score=controller.score_micro_batch)
    loglik = out.rows["virtual_loglik"]
    m = micro.completion_mask.float()
    sampler_mean = (micro.behaviour_logprobs * m).sum(1) / m.sum(1)
    torch.testing.assert_close(loglik[:, 2], sampler_mean, atol=1e-4, rtol=0)
    logits = _logits(tiny_model, micro)
    untruncated = virtual_temperature_loglik(
        logits, micro.completion_ids, micro.completion_mask, torch.tensor(CANDIDATES)
    )
    if top_p < 1.0 or top_k:
        assert (untruncated[:, 2] - sampler_mean).abs().max() > 1e-3  # the replay matters on this batch


def _logits(model, micro):
    from kelvin.rl.policy_pass import completion_logits

    with torch.no_grad():
        return completion_logits(model, micro)[0]


def test_bad_reduction_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"loglik_reduction='median'.*'mean' or 'sum'"):
        TAMPOControllerConfig(loglik_reduction="median").validate(SamplingConfig())  # type: ignore[arg-type]
