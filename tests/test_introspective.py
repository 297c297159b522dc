"""IntroLLM: the head's action log-prob, the sampler record, coordinate ascent, learning, state, saving, rendering.

References are independent of the code under test: scipy.stats / scipy.special for the distributions, a plain full
forward pass of the model for hidden states and token log-probs, NumPy for the statistics.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from scipy import special, stats

from kelvin.controllers.base import Scores
from kelvin.controllers.introspective import (
    HEAD_CONFIG_FILE,
    HEAD_WEIGHTS_FILE,
    IntrospectiveController,
    IntrospectiveControllerConfig,
    action_log_prob,
    load_head,
    save_head,
    temperature_statistics,
)
from kelvin.models.loading import build_char_tokenizer, build_tiny_model, save_pretrained
from kelvin.rl.logprobs import entropy_from_logits, token_logprobs_and_entropy
from kelvin.rl.rollouts import Rollouts
from kelvin.rl.sampling import SamplingSettings, sample
from kelvin.tasks.arithmetic import example_at

HIDDEN = 128  # the "1m" tiny model's width


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return build_tiny_model("1m", len(tokenizer), seed=0).eval()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    texts = [example_at(7, i, 1, 3).prompt for i in range(8) for _ in range(4)]  # 8 prompts x 4 samples
    encoded = tokenizer(texts, return_tensors="pt", padding=True)
    return encoded["input_ids"], encoded["attention_mask"]


def settings(tokenizer, max_new_tokens: int = 24) -> SamplingSettings:
    return SamplingSettings(max_new_tokens=max_new_tokens, eos_ids=[tokenizer.eos_token_id], pad_id=0)


def run_sampler(model, prompts, controller, tokenizer, seed: int = 0, max_new_tokens: int = 24, initial: float = 1.0):
    ids, mask = prompts
    generator = torch.Generator().manual_seed(seed)
    return sample(
        model,
        ids,
        mask,
        controller,
        settings(tokenizer, max_new_tokens),
        generator=generator,
        initial_temperature=initial,
    )


def full_forward(model, rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:
    """Last-layer hidden states and logits at the positions that produced each completion token (one plain pass)."""
    mask = rollouts.attention_mask
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=rollouts.input_ids, attention_mask=mask, position_ids=positions, output_hidden_states=True)
    start, length = rollouts.prompt_ids.shape[1] - 1, rollouts.completion_ids.shape[1]
    return out.hidden_states[-1][:, start : start + length], out.logits[:, start : start + length]


def scores_for(model, rollouts: Rollouts) -> Scores:
    with torch.no_grad():
        hidden, logits = full_forward(model, rollouts)
    old, _ = token_logprobs_and_entropy(logits, rollouts.completion_ids, rollouts.temperature, with_entropy=False)
    return Scores(old_logprobs=old, entropy_at_one=entropy_from_logits(logits), hidden_states=hidden)


def config(**changes) -> IntrospectiveControllerConfig:
    return dataclasses.replace(IntrospectiveControllerConfig(), **changes)


# ---- the action distribution ---------------------------------------------------------------------------------------


def test_action_log_prob_matches_scipy():
    rng = np.random.default_rng(0)
    n, eps = 500, 1e-3
    head_out = rng.normal(0.0, 3.0, size=(n, 3))
    gate = rng.integers(0, 2, size=n).astype(np.float64)
    z = np.where(gate > 0, rng.uniform(0.001, 0.999, size=n), 0.0)  # the sampler stores 0 where the gate is 0
    alpha = np.logaddexp(0.0, head_out[:, 1]) + eps
    beta = np.logaddexp(0.0, head_out[:, 2]) + eps
    expected = stats.bernoulli.logpmf(gate, special.expit(head_out[:, 0]))
    expected = expected + np.where(gate > 0, stats.beta.logpdf(np.where(gate > 0, z, 0.5), alpha, beta), 0.0)

    out = torch.tensor(head_out, requires_grad=True)
    got = action_log_prob(out, torch.tensor(gate), torch.tensor(z), eps)
    np.testing.assert_allclose(got.detach().numpy(), expected, rtol=1e-10, atol=1e-10)
    got.sum().backward()
    assert torch.isfinite(out.grad).all()
    assert (out.grad[torch.tensor(gate) == 0, 1:] == 0).all()  # no Beta gradient where the gate kept tau


def test_fresh_head_outputs_the_configured_distribution():
    cfg = config(init_gate_prob=0.05, init_concentration=20.0, tau_min=0.4, tau_max=1.6, tau0=1.1)
    controller = IntrospectiveController(cfg, HIDDEN)
    with torch.no_grad():
        u = controller.head(torch.randn(256, HIDDEN)).double().numpy()
    alpha = np.logaddexp(0.0, u[:, 1]) + cfg.beta_eps
    beta = np.logaddexp(0.0, u[:, 2]) + cfg.beta_eps
    beta_mean_tau = cfg.tau_min + alpha / (alpha + beta) * (cfg.tau_max - cfg.tau_min)
    np.testing.assert_allclose(special.expit(u[:, 0]), 0.05, atol=0.002)
    np.testing.assert_allclose(beta_mean_tau, 1.1, atol=0.01)
    np.testing.assert_allclose(alpha + beta, 20.0, rtol=0.02)


# ---- the sampler's record ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def busy_rollouts(model, prompts, tokenizer):
    """A head whose gate fires half the time and whose Beta is wide, sampled through Kelvin's sampler."""
    controller = IntrospectiveController(config(init_gate_prob=0.5, init_concentration=3.0, seed=3), HIDDEN)
    return controller, run_sampler(model, prompts, controller, tokenizer, seed=1)


def test_recorded_actions_reproduce_from_a_full_forward_pass(model, busy_rollouts):
    controller, rollouts = busy_rollouts
    mask = rollouts.completion_mask.bool()
    assert int(mask.sum()) > 200
    with torch.no_grad():
        hidden, logits = full_forward(model, rollouts)
        head_out = controller.head(hidden)
    acts = rollouts.actions
    new_head = action_log_prob(head_out, acts["gate"], acts["beta_sample"], controller.cfg.beta_eps)
    head_ratio = torch.exp(new_head - acts["head_logprob"])[mask]
    assert (head_ratio - 1).abs().max() < 1e-5

    token_logp, _ = token_logprobs_and_entropy(
        logits, rollouts.completion_ids, rollouts.temperature, with_entropy=False
    )
    token_ratio = torch.exp(token_logp - rollouts.behaviour_logprobs)[mask]
    assert (token_ratio - 1).abs().max() < 1e-5

    lengths = rollouts.completion_lengths
    distinct = [len(set(rollouts.temperature[b, : lengths[b]].tolist())) for b in range(rollouts.batch_size)]
    assert max(distinct) >= 5  # tau changes along the sequence
    assert float(acts["gate"][mask].mean()) == pytest.approx(0.5, abs=0.1)


def test_keep_and_resample_semantics_on_every_token(model, prompts, tokenizer):
    cfg = config(init_gate_prob=0.3, init_concentration=2.0, tau_min=0.6, tau_max=1.4, tau0=0.9, seed=5)
    controller = IntrospectiveController(cfg, HIDDEN)
    # The sampler is told 0.3 on purpose: the controller starts from its own tau0 whatever the sampler was given.
    rollouts = run_sampler(model, prompts, controller, tokenizer, seed=2, initial=0.3)
    tau, gate, z = rollouts.temperature, rollouts.actions["gate"], rollouts.actions["beta_sample"]
    checked = 0
    for b in range(rollouts.batch_size):
        previous = 0.9
        for t in range(int(rollouts.completion_lengths[b])):
            if gate[b, t] == 1:
                assert 0 < z[b, t] < 1
                assert tau[b, t].item() == pytest.approx(0.6 + z[b, t].item() * 0.8, abs=1e-6)
            else:
                assert gate[b, t] == 0 and z[b, t] == 0
                assert tau[b, t].item() == pytest.approx(previous, abs=1e-7)
            assert 0.6 <= tau[b, t] <= 1.4
            previous = tau[b, t].item()
            checked += 1
    assert checked > 200
    assert 0.2 < float(gate[rollouts.completion_mask.bool()].mean()) < 0.4


def test_fresh_head_samples_like_the_fixed_baseline(model, prompts, tokenizer):
    concentrated = IntrospectiveController(config(init_gate_prob=0.01, init_concentration=100.0), HIDDEN)
    rollouts = run_sampler(model, prompts, concentrated, tokenizer, seed=3)
    taus = rollouts.temperature[rollouts.completion_mask.bool()]
    assert float(((taus - 1.0).abs() <= 0.05).float().mean()) > 0.9

    default = IntrospectiveController(IntrospectiveControllerConfig(), HIDDEN)
    rollouts = run_sampler(model, prompts, default, tokenizer, seed=3)
    mask = rollouts.completion_mask.bool()
    assert float(rollouts.temperature[mask].mean()) == pytest.approx(1.0, abs=0.02)
    assert 0.02 < float(rollouts.actions["gate"][mask].mean()) < 0.09


# ---- statistics ------------------------------------------------------------------------------------------------------


def test_temperature_statistics_match_numpy():
    gen = torch.Generator().manual_seed(0)
    tau = 0.5 + torch.rand(6, 9, generator=gen)
    entropy = 2 * tau + torch.rand(6, 9, generator=gen)
    gate = (torch.rand(6, 9, generator=gen) < 0.3).float()
    mask = torch.ones(6, 9, dtype=torch.long)
    mask[2, 5:] = 0
    mask[4, 1:] = 0
    got = temperature_statistics(tau, mask, gate, entropy)
    keep = mask.bool().numpy()
    t, e = tau.numpy()[keep].astype(np.float64), entropy.numpy()[keep].astype(np.float64)
    assert got["temperature/token_mean"] == pytest.approx(t.mean(), rel=1e-9)
    assert got["temperature/token_std"] == pytest.approx(t.std(), rel=1e-9)
    assert got["temperature/gate_rate"] == pytest.approx(gate.numpy()[keep].mean(), rel=1e-9)
    assert got["temperature/entropy_corr"] == pytest.approx(np.corrcoef(t, e)[0, 1], rel=1e-9)
    for q in (10, 50, 90):
        assert got[f"temperature/q{q}"] == pytest.approx(np.percentile(t, q), rel=1e-9)


# ---- coordinate ascent -----------------------------------------------------------------------------------------------


def test_alternation_blocks_and_joint():
    blocks = IntrospectiveController(config(theta_steps=2, phi_steps=1), HIDDEN)
    seen = []
    for step in range(6):
        seen.append((blocks.trains_policy(step), blocks.scoring_request().hidden_states, blocks.phase()))
        blocks.completed_steps += 1  # what update() does at the end of every step
    assert [s[0] for s in seen] == [True, True, False, True, True, False]
    assert [s[1] for s in seen] == [False, False, True, False, False, True]
    joint = IntrospectiveController(config(joint=True), HIDDEN)
    assert joint.trains_policy(0) and joint.scoring_request().hidden_states and joint.phase() == "joint"


def test_phi_update_trains_only_the_head(model, prompts, tokenizer):
    controller = IntrospectiveController(config(theta_steps=0, phi_steps=1, init_gate_prob=0.5), HIDDEN)
    rollouts = run_sampler(model, prompts, controller, tokenizer, seed=4, max_new_tokens=12)
    # Hidden states that still carry the graph to the backbone: only the head's detach keeps gradients out of it.
    hidden, logits = full_forward(model, rollouts)
    assert hidden.requires_grad
    scores = Scores(old_logprobs=torch.zeros_like(rollouts.temperature), entropy_at_one=logits.detach()[..., 0])
    scores.hidden_states = hidden
    before = [p.detach().clone() for p in controller.head.parameters()]
    advantages = torch.randn(rollouts.batch_size, generator=torch.Generator().manual_seed(0))
    assert not controller.trains_policy(0)
    metrics = controller.update(rollouts, advantages, scores)
    assert all(p.grad is None for p in model.parameters())
    assert all(not torch.equal(a, b) for a, b in zip(before, controller.head.parameters()))
    assert metrics["introspective/phase"] == 1.0
    assert metrics["introspective/initial_ratio_max_error"] < 1e-5
    assert metrics["introspective/grad_norm"] > 0


def test_phi_step_follows_the_policy_gradient(model, prompts, tokenizer):
    """At ratio 1 the surrogate's gradient on b2 is the policy gradient; Adam's first step moves b2 by -lr sign(g)."""
    lr, eps = 1e-3, 1e-3
    cfg = config(theta_steps=0, phi_steps=1, init_gate_prob=0.4, init_concentration=5.0, learning_rate=lr)
    controller = IntrospectiveController(cfg, HIDDEN)
    rollouts = run_sampler(model, prompts, controller, tokenizer, seed=5, max_new_tokens=12)
    scores = scores_for(model, rollouts)
    advantages = torch.linspace(-1.5, 1.5, rollouts.batch_size)
    with torch.no_grad():
        u = controller.head(scores.hidden_states).double().numpy()
    m = rollouts.completion_mask.numpy().astype(np.float64)
    a = np.broadcast_to(advantages.numpy()[:, None], m.shape).astype(np.float64)
    c = rollouts.actions["gate"].numpy().astype(np.float64)
    z = np.where(c > 0, rollouts.actions["beta_sample"].numpy().astype(np.float64), 0.5)
    alpha, beta = np.logaddexp(0, u[..., 1]) + eps, np.logaddexp(0, u[..., 2]) + eps
    d_gate = c - special.expit(u[..., 0])
    d_alpha = c * (np.log(z) - special.digamma(alpha) + special.digamma(alpha + beta)) * special.expit(u[..., 1])
    d_beta = c * (np.log1p(-z) - special.digamma(beta) + special.digamma(alpha + beta)) * special.expit(u[..., 2])
    grad = np.array([-(m * a * d).sum() / m.sum() for d in (d_gate, d_alpha, d_beta)])
    expected_loss = -(m * a).sum() / m.sum()

    bias_before = controller.head.fc2.bias.detach().clone().double().numpy()
    metrics = controller.update(rollouts, advantages, scores)
    moved = controller.head.fc2.bias.detach().double().numpy() - bias_before
    assert metrics["introspective/loss"] == pytest.approx(expected_loss, abs=1e-6)
    assert np.all(np.abs(grad) > 1e-4)  # the reference gradient is non-degenerate
    np.testing.assert_allclose(moved, -lr * np.sign(grad), rtol=0.02)


@pytest.mark.parametrize("prefer_cold", [True, False])
def test_phi_updates_move_tau_toward_the_rewarded_temperature(model, prompts, tokenizer, prefer_cold):
    cfg = config(theta_steps=0, phi_steps=1, init_gate_prob=0.5, init_concentration=4.0, learning_rate=1e-2, seed=11)
    controller = IntrospectiveController(cfg, HIDDEN)
    ids, mask = prompts
    small = (ids[:16], mask[:16])

    def mean_tau(seed: int) -> float:
        rollouts = run_sampler(model, prompts, controller, tokenizer, seed=seed, max_new_tokens=12)
        return float(rollouts.temperature[rollouts.completion_mask.bool()].mean())

    start = mean_tau(1000)
    for it in range(10):
        rollouts = run_sampler(model, small, controller, tokenizer, seed=it, max_new_tokens=10)
        m = rollouts.completion_mask.float()
        row_tau = (rollouts.temperature * m).sum(1) / m.sum(1).clamp(min=1)
        reward = -row_tau if prefer_cold else row_tau
        advantages = (reward - reward.mean()) / (reward.std() + 1e-6)
        controller.update(rollouts, advantages, scores_for(model, rollouts))
    end = mean_tau(1000)
    shift = end - start
    assert (shift < -0.2) if prefer_cold else (shift > 0.2), f"mean tau {start:.3f} -> {end:.3f}"


# ---- state and saving ------------------------------------------------------------------------------------------------


def test_state_dict_round_trip_resumes_exactly(model, prompts, tokenizer):
    cfg = config(theta_steps=1, phi_steps=2, init_gate_prob=0.4, init_concentration=5.0, phi_iterations=2, seed=2)
    first = IntrospectiveController(cfg, HIDDEN)
    for step in range(2):  # a theta step then a phi step: optimizer state and generator have moved
        rollouts = run_sampler(model, prompts, first, tokenizer, seed=step, max_new_tokens=10)
        first.update(rollouts, torch.randn(rollouts.batch_size), scores_for(model, rollouts))
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # what a checkpoint does
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    def next_step(controller: IntrospectiveController) -> tuple[Rollouts, dict[str, float]]:
        rollouts = run_sampler(model, prompts, controller, tokenizer, seed=9, max_new_tokens=10)
        advantages = torch.linspace(-1, 1, rollouts.batch_size)
        return rollouts, controller.update(rollouts, advantages, scores_for(model, rollouts))

    resumed = IntrospectiveController(dataclasses.replace(cfg, seed=99), HIDDEN)  # different init and stream
    resumed.load_state_dict(saved)
    assert resumed.phase() == first.phase() == "phi"
    expected_rollouts, expected_metrics = next_step(first)
    got_rollouts, got_metrics = next_step(resumed)
    assert torch.equal(got_rollouts.temperature, expected_rollouts.temperature)
    for key in ("gate", "beta_sample", "head_logprob"):
        assert torch.equal(got_rollouts.actions[key], expected_rollouts.actions[key])
    assert got_metrics == expected_metrics
    for a, b in zip(first.head.parameters(), resumed.head.parameters()):
        assert torch.equal(a, b)


def test_begin_step_makes_draws_a_function_of_the_step(model, prompts, tokenizer):
    from kelvin.controllers.introspective import derived_seed

    cfg = config(init_gate_prob=0.5, init_concentration=3.0)
    first, second = IntrospectiveController(cfg, HIDDEN), IntrospectiveController(cfg, HIDDEN)
    run_sampler(model, prompts, second, tokenizer, seed=0, max_new_tokens=6)  # e.g. an evaluation between steps
    first.begin_step(3)
    second.begin_step(3)
    a = run_sampler(model, prompts, first, tokenizer, seed=0, max_new_tokens=10)
    b = run_sampler(model, prompts, second, tokenizer, seed=0, max_new_tokens=10)
    assert torch.equal(a.temperature, b.temperature) and torch.equal(a.actions["gate"], b.actions["gate"])
    first.begin_step(4)
    c = run_sampler(model, prompts, first, tokenizer, seed=0, max_new_tokens=10)
    assert not torch.equal(c.actions["gate"], a.actions["gate"])
    assert len({derived_seed(0, 0, 3), derived_seed(0, 1, 3), derived_seed(0, 0, 4), derived_seed(1, 0, 3)}) == 4


def test_save_and_load_head_beside_the_model(tmp_path):
    cfg = config(tau_min=0.3, tau_max=1.7, tau0=0.8, seed=4)
    controller = IntrospectiveController(cfg, HIDDEN)
    with torch.no_grad():
        controller.head.fc2.weight.add_(0.5)  # a trained head differs from any fresh one
    assert load_head(tmp_path) is None
    controller.save_pretrained(tmp_path)  # = save_head(controller.head, tmp_path)
    assert (tmp_path / HEAD_WEIGHTS_FILE).is_file() and (tmp_path / HEAD_CONFIG_FILE).is_file()
    loaded = load_head(tmp_path)
    assert loaded is not None and loaded.config == cfg and loaded.hidden_size == HIDDEN
    for (name, a), (_, b) in zip(controller.head.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    rebuilt = IntrospectiveController.from_pretrained(tmp_path)
    h = torch.randn(5, HIDDEN)
    assert torch.equal(rebuilt.head(h), controller.head(h))
    assert rebuilt.initial_temperature == 0.8


def test_generate_uses_the_learned_head_unless_a_temperature_is_given(tmp_path, model, tokenizer):
    from kelvin.eval.generate import generate, render_generation

    save_pretrained(model, tokenizer, tmp_path)
    head_cfg = config(init_gate_prob=0.5, init_concentration=3.0, tau_min=0.5, tau_max=1.5)
    save_head(IntrospectiveController(head_cfg, HIDDEN).head, tmp_path)
    prompts = ["12+34=", "5+6="]
    learned = generate(tmp_path, prompts, max_new_tokens=12, seed=1)
    assert learned.learned and learned.tau_range == (0.5, 1.5)
    assert all(len(toks) == len(taus) > 0 for toks, taus in zip(learned.tokens, learned.taus))
    flat = [t for row in learned.taus for t in row]
    assert all(0.5 <= t <= 1.5 for t in flat) and len(set(flat)) > 3
    fixed = generate(tmp_path, prompts, max_new_tokens=12, temperature=0.7, seed=1)
    assert not fixed.learned and all(t == pytest.approx(0.7) for row in fixed.taus for t in row)
    render_generation(learned, tmp_path / "tau.html", None)
    assert "Learned per-token temperature" in (tmp_path / "tau.html").read_text()


# ---- rendering -------------------------------------------------------------------------------------------------------


def test_token_temperature_renderings(tmp_path):
    from matplotlib.image import imread

    from kelvin.eval.token_colors import mean_tau_by_class, render_token_temperatures

    tokens = [["12", "+", "7", "=", "19", "</s>"], ["Let", " us", " think", "\n", "ok"]]
    taus = [[0.55, 0.6, 0.62, 0.7, 0.5, 0.5], [1.4, 1.3, 1.5, 1.2, 1.45]]
    summary = mean_tau_by_class(tokens, taus)
    assert summary["digits"] == pytest.approx((np.mean([0.55, 0.62, 0.5]), 3))
    assert summary["letters"] == pytest.approx((np.mean([1.4, 1.3, 1.5, 1.45]), 4))

    render_token_temperatures(tokens, taus, tmp_path / "t.html", tmp_path / "t.png", tau_range=(0.5, 1.5))
    page = (tmp_path / "t.html").read_text()
    assert "&lt;/s&gt;" in page and "title='tau=1.500'" in page and "title='tau=0.550'" in page
    assert page.count("<span title='tau=") == 11

    def saturated_pixels(all_tau: float) -> tuple[int, int]:
        flat = [[all_tau] * len(row) for row in tokens]
        path = tmp_path / f"{all_tau}.png"
        render_token_temperatures(tokens, flat, None, path, tau_range=(0.5, 1.5))
        rgb = imread(path)[..., :3]
        blue = np.all(np.abs(rgb - np.array([0x3B, 0x4C, 0xC0]) / 255) < 0.03, axis=-1).sum()
        red = np.all(np.abs(rgb - np.array([0xB4, 0x04, 0x26]) / 255) < 0.03, axis=-1).sum()
        return int(blue), int(red)

    cold_blue, cold_red = saturated_pixels(0.5)
    hot_blue, hot_red = saturated_pixels(1.5)
    assert cold_blue > 3 * hot_blue and hot_red > 3 * cold_red  # token boxes, not just the colour bar, carry tau
    with pytest.raises(ValueError, match="one tau per token"):
        render_token_temperatures(tokens, [[1.0]], tmp_path / "x.html", None)


# ---- data parallel ---------------------------------------------------------------------------------------------------


@pytest.mark.slow  # two fresh Python processes import torch: ~5 s on an idle 2-core machine
def test_phi_update_is_data_parallel(tmp_path, model, prompts, tokenizer):
    """Two gloo processes with half the rows each take the same head step as one process with all rows."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    cfg = config(theta_steps=0, phi_steps=1, init_gate_prob=0.5, init_concentration=4.0, phi_iterations=2, seed=6)
    controller = IntrospectiveController(cfg, HIDDEN)
    rollouts = run_sampler(model, prompts, controller, tokenizer, seed=8, max_new_tokens=10)
    scores = scores_for(model, rollouts)
    advantages = torch.randn(rollouts.batch_size, generator=torch.Generator().manual_seed(1))
    initial = controller.state_dict()
    data = dict(config=cfg, hidden_size=HIDDEN, state=initial, rollouts=rollouts, scores=scores)
    torch.save({**data, "advantages": advantages, "rows_per_rank": rollouts.batch_size // 2}, tmp_path / "in.pt")
    expected = controller.update(rollouts, advantages, scores)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = Path(__file__).with_name("introspective_ddp_worker.py")
    root = str(Path(__file__).resolve().parents[1])
    env_base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2"}
    env_base["PYTHONPATH"] = root + os.pathsep + env_base.get("PYTHONPATH", "")
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), str(tmp_path / "in.pt"), str(tmp_path / "out")],
            env={**env_base, "RANK": str(rank), "OMP_NUM_THREADS": "1"},
        )
        for rank in range(2)
    ]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    outputs = [torch.load(tmp_path / f"out.{rank}", weights_only=False) for rank in range(2)]
    assert outputs[0]["world"] == 2
    for name, value in controller.head.state_dict().items():
        assert torch.equal(outputs[0]["head"][name], outputs[1]["head"][name]), name
        torch.testing.assert_close(outputs[0]["head"][name], value, atol=1e-6, rtol=1e-5)
    for key in ("introspective/loss", "introspective/clip_ratio", "introspective/grad_norm"):
        assert outputs[0]["metrics"][key] == pytest.approx(expected[key], rel=1e-4, abs=1e-7)


# ---- with Kelvin's trainer -------------------------------------------------------------------------------------------

TRAIN_OVERRIDES = [
    "controller.name=introspective",
    "controller.introspective.init_gate_prob=0.3",
    "controller.introspective.init_concentration=5",
    "controller.introspective.learning_rate=3e-3",
    "trainer.steps=6",
    "trainer.prompts_per_step=8",
    "sampling.num_generations=4",
    "trainer.micro_batch_size=16",
    "sampling.max_completion_length=40",
    "task.eval_size=16",
    "trainer.save_every=3",
    "trainer.tensorboard=false",
    "optim.learning_rate=5e-4",
]


class Killed(Exception):
    pass


def test_trainer_alternates_phases_and_resumes_exactly(tmp_path, warm_model_dir):
    """Theta steps leave the head alone, phi steps the model; a killed and resumed run equals a straight one."""
    import json

    from safetensors.torch import load_file

    from kelvin.config import load_config
    from kelvin.rl.trainer import Trainer

    config = load_config(None, TRAIN_OVERRIDES)
    straight = Trainer(config, tmp_path / "straight", quiet=True)
    changes: list[tuple[bool, bool, bool]] = []  # (theta step, model moved, head moved)

    def snapshot() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return (
            [p.detach().clone() for p in straight.policy.parameters()],
            [p.detach().clone() for p in straight.controller.head.parameters()],
        )

    before = [snapshot()]  # the weights before the step that just ran

    def watch(metrics: dict[str, float]) -> None:
        model_before, head_before = before[0]
        model_moved = any(not torch.equal(a, b) for a, b in zip(model_before, straight.policy.parameters()))
        head_moved = any(not torch.equal(a, b) for a, b in zip(head_before, straight.controller.head.parameters()))
        changes.append((metrics["policy_updated"] == 1.0, model_moved, head_moved))
        before[0] = snapshot()

    straight.train(progress=False, on_step=watch)
    assert [c[0] for c in changes] == [True, False] * 3
    assert not any(c[2] for c in changes if c[0]) and not any(c[1] for c in changes if not c[0])
    assert any(c[1] for c in changes if c[0]) and all(c[2] for c in changes if not c[0])

    resumed = Trainer(config, tmp_path / "resumed", quiet=True)

    def die_after_step_4(metrics: dict[str, float]) -> None:
        if metrics["step"] == 4:  # the checkpoint of step 3 is on disk
            raise Killed

    with pytest.raises(Killed):
        resumed.train(progress=False, on_step=die_after_step_4)
    Trainer(config, tmp_path / "resumed", quiet=True).train(resume=True, progress=False)

    def rows(folder):
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return {r["step"]: {k: v for k, v in r.items() if not k.startswith("time/")} for r in map(json.loads, lines)}

    a, b = rows(tmp_path / "straight"), rows(tmp_path / "resumed")
    for step in (4, 5, 6):
        assert a[step] == b[step], f"step {step} differs"
    assert a[6]["introspective/phase"] == 1.0 and a[6]["introspective/initial_ratio_max_error"] < 1e-4
    head_a = load_file(tmp_path / "straight" / "model" / HEAD_WEIGHTS_FILE)
    head_b = load_file(tmp_path / "resumed" / "model" / HEAD_WEIGHTS_FILE)
    assert head_a.keys() == head_b.keys() and all(torch.equal(head_a[k], head_b[k]) for k in head_a)
    assert load_head(tmp_path / "straight" / "model") is not None
