"""Loss normalisers, clipping, sequence-level ratios, KL and advantages against direct NumPy computations.

The NumPy side is written from the formulas (TRL 1.16's `_compute_loss` semantics, DESIGN section 5.1), not by
calling Kelvin code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kelvin.rl.grpo import LossInputs, LossSettings, group_advantages, grpo_loss

B, L = 6, 7


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    logp = rng.normal(-2.0, 0.5, (B, L))
    old = logp + rng.normal(0.0, 0.3, (B, L))  # ratios spread well outside [0.8, 1.2]
    ref = logp + rng.normal(0.0, 0.2, (B, L))
    adv = rng.normal(0.0, 1.0, B)
    ent = rng.uniform(0.1, 2.0, (B, L))
    lengths = [7, 3, 0, 5, 1, 6]  # one empty row
    mask = np.array([[1.0 if t < n else 0.0 for t in range(L)] for n in lengths])
    return logp, old, ref, adv, mask, ent


def numpy_loss(
    logp,
    old,
    ref,
    adv,
    mask,
    ent,
    *,
    loss_type,
    eps=0.2,
    eps_high=0.28,
    beta=0.0,
    bias_kl=True,
    level="token",
    ent_coef=0.0,
    max_len=L,
    ga=1,
    n_items=None,
    procs=1,
):
    log_ratio = logp - old
    if level == "sequence":
        lw = ((log_ratio * mask).sum(1) / np.maximum(mask.sum(1), 1.0))[:, None] * np.ones((1, L))
    else:
        lw = log_ratio
    rho = np.exp(lw)
    a = adv[:, None]
    per_token = -np.minimum(rho * a, np.clip(rho, 1 - eps, 1 + eps_high) * a)
    if beta:
        kl = np.exp(ref - logp) - (ref - logp) - 1
        if bias_kl:
            kl = kl * rho
        per_token = per_token + beta * kl
    s = (per_token * mask).sum()
    if loss_type == "grpo":
        loss = np.mean((per_token * mask).sum(1) / np.maximum(mask.sum(1), 1.0)) / ga
    elif loss_type == "bnpo":
        loss = s / max(mask.sum(), 1.0) / ga
    elif loss_type == "dr_grpo":
        loss = s / (B * max_len) / ga
    elif loss_type == "dapo":
        loss = s / (max(n_items, 1.0) / procs)
    if ent_coef:
        loss = loss - ent_coef * (ent * mask).sum() / max(mask.sum(), 1.0) / ga
    return loss


def torch_loss(logp, old, ref, adv, mask, ent, **kw):
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    logp_t = t(logp).requires_grad_(True)
    s = LossSettings(
        loss_type=kw["loss_type"],
        epsilon=kw.get("eps", 0.2),
        epsilon_high=kw.get("eps_high", 0.28),
        beta=kw.get("beta", 0.0),
        use_bias_correction_kl=kw.get("bias_kl", True),
        importance_sampling_level=kw.get("level", "token"),
        entropy_coef=kw.get("ent_coef", 0.0),
        max_completion_length=kw.get("max_len", L),
        grad_accum_steps=kw.get("ga", 1),
        num_items_in_batch=kw.get("n_items") or 1.0,
        num_processes=kw.get("procs", 1),
    )
    loss, stats = grpo_loss(LossInputs(logp_t, t(old), t(adv), t(mask), t(ref), t(ent)), s)
    loss.backward()
    return loss.item(), logp_t.grad.numpy(), stats


def numeric_grad(fn, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        g[idx] = (fn(up) - fn(down)) / (2 * h)
    return g


CASES = [
    dict(loss_type="grpo"),
    dict(loss_type="bnpo", ga=2),
    dict(loss_type="dr_grpo", max_len=12, ga=3),
    dict(loss_type="dapo", n_items=40.0, procs=2),
    dict(loss_type="dapo", n_items=22.0, beta=0.05),
    dict(loss_type="grpo", beta=0.1, bias_kl=False, ent_coef=0.01),
    dict(loss_type="bnpo", level="sequence", eps=0.1, eps_high=0.1),
    dict(loss_type="dapo", n_items=22.0, level="sequence", beta=0.04, ent_coef=0.02),
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_loss_and_gradient_match_numpy(batch, case):
    logp, old, ref, adv, mask, ent = batch
    expected = numpy_loss(*batch, **case)
    got, grad, _ = torch_loss(*batch, **case)
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)
    expected_grad = numeric_grad(lambda x: numpy_loss(x, old, ref, adv, mask, ent, **case), logp)
    np.testing.assert_allclose(grad, expected_grad, atol=1e-6)


def test_dapo_equals_bnpo_for_one_process_one_micro_batch(batch):
    _logp, _old, _ref, _adv, mask, _ent = batch
    dapo, _, _ = torch_loss(*batch, loss_type="dapo", n_items=mask.sum())
    bnpo, _, _ = torch_loss(*batch, loss_type="bnpo")
    assert dapo == pytest.approx(bnpo, rel=1e-12)


def test_clip_metrics_follow_trl_definition(batch):
    logp, old, _ref, adv, mask, _ent = batch
    _, _, stats = torch_loss(*batch, loss_type="bnpo", eps=0.2, eps_high=0.28)
    rho = np.exp(logp - old)
    low = ((rho < 0.8) & (adv[:, None] < 0) & (mask > 0)).sum()
    high = ((rho > 1.28) & (adv[:, None] > 0) & (mask > 0)).sum()
    assert low > 0 and high > 0
    assert stats.clip_low == low and stats.clip_high == high and stats.clip_units == mask.sum()
    _, _, seq = torch_loss(*batch, loss_type="bnpo", level="sequence", eps=0.05, eps_high=0.05)
    seq_rho = np.exp(((logp - old) * mask).sum(1) / np.maximum(mask.sum(1), 1))
    assert seq.clip_low == ((seq_rho < 0.95) & (adv < 0)).sum() and seq.clip_units == B


def test_kl_is_zero_when_reference_equals_policy(batch):
    logp, old, _ref, adv, mask, ent = batch
    _, _, stats = torch_loss(logp, old, logp, adv, mask, ent, loss_type="bnpo", beta=0.5)
    assert stats.kl_sum == pytest.approx(0.0, abs=1e-12)


def numpy_advantages(rewards, g, scale):
    groups = rewards.reshape(-1, g)
    out = np.zeros_like(groups)
    batch_valid = rewards[~np.isnan(rewards)]
    batch_std = np.std(batch_valid, ddof=1)
    for i, row in enumerate(groups):
        valid = row[~np.isnan(row)]
        mean = valid.mean()
        std = np.std(valid, ddof=1) if len(valid) > 1 else np.nan
        a = row - mean
        if scale == "group":
            a = a / (std + 1e-4)
        elif scale == "batch":
            a = a / (batch_std + 1e-4)
        out[i] = np.nan_to_num(a, nan=0.0)
    return out.reshape(-1)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_match_numpy(scale):
    rewards = np.array([1, 0, 0, 1, 1, 1, 1, 1, 0.5, np.nan, 0.0, 2.0])
    got = group_advantages(torch.tensor(rewards), 4, scale)
    np.testing.assert_allclose(got.advantages.numpy(), numpy_advantages(rewards, 4, scale), atol=1e-12)
    assert got.advantages[9] == 0.0  # unscorable row
    assert got.std_is_zero.tolist()[4:8] == [True] * 4
    assert not got.std_is_zero[0]


def test_group_advantages_reject_ragged_groups():
    with pytest.raises(ValueError, match="num_generations=4"):
        group_advantages(torch.zeros(6), 4, "group")


def test_loss_stats_combine_over_micro_batches_like_one_batch(batch):
    """Micro-batch stats combined (and turned into metrics) equal the statistics of the whole batch in NumPy."""
    logp, old, ref, adv, mask, ent = batch
    s = LossSettings(loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.1, num_items_in_batch=float(mask.sum()))
    total = None
    for rows in (slice(0, 2), slice(2, 6)):
        inputs = LossInputs(
            logprobs=torch.tensor(logp[rows]),
            old_logprobs=torch.tensor(old[rows]),
            advantages=torch.tensor(adv[rows]),
            mask=torch.tensor(mask[rows]),
            ref_logprobs=torch.tensor(ref[rows]),
            entropy=torch.tensor(ent[rows]),
        )
        _, stats = grpo_loss(inputs, s)
        total = stats if total is None else total.combine(stats)
    metrics = total.metrics(total.sums(), passes=2, with_kl=True)
    ratio = np.exp(logp - old)
    a = adv[:, None]
    low = (ratio < 0.8) & (a < 0)
    high = (ratio > 1.28) & (a > 0)
    delta = ref - logp
    kl = (np.exp(delta) - delta - 1) * ratio
    tokens = mask.sum()
    assert metrics["entropy"] == pytest.approx((ent * mask).sum() / tokens, rel=1e-12)
    assert metrics["clip_ratio/low_mean"] == pytest.approx((low * mask).sum() / tokens, rel=1e-12)
    assert metrics["clip_ratio/high_mean"] == pytest.approx((high * mask).sum() / tokens, rel=1e-12)
    assert metrics["clip_ratio/region_mean"] == pytest.approx(((low | high) * mask).sum() / tokens, rel=1e-12)
    assert metrics["kl"] == pytest.approx((kl * mask).sum() / tokens, rel=1e-9)
    assert metrics["ratio/max"] == pytest.approx(ratio[mask > 0].max(), rel=1e-12)
    expected_loss = sum(
        float(grpo_loss(LossInputs(*[torch.tensor(x[r]) for x in (logp, old, adv, mask, ref)]), s)[0])
        for r in (slice(0, 2), slice(2, 6))
    )
    assert metrics["loss"] == pytest.approx(expected_loss / 2, rel=1e-12)
