"""TAMPO's pure functions against independent computations, its learning direction, its draws and its resume."""

from __future__ import annotations

import copy
import io
import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch

from kelvin.controllers import tampo
from kelvin.controllers.base import Scores
from kelvin.controllers.tampo import (
    TAMPOController,
    TAMPOControllerConfig,
    minmax_distribution,
    nucleus_draw,
    nucleus_keep,
    sparsemax,
    tampo_meta_update,
    temperature_advantages,
    virtual_temperature_loglik,
)
from kelvin.rl.rollouts import Rollouts

CANDIDATES = [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5]

# --------------------------------------------------------------------------------------------------------------------
# sparsemax
# --------------------------------------------------------------------------------------------------------------------


def simplex_projection_bisection(v: np.ndarray) -> np.ndarray:
    """argmin_p ||p - v||^2 over the simplex: p = max(v - tau, 0) with tau solving sum max(v - tau, 0) = 1."""
    low, high = v.max() - 1.0, v.max()  # the sum is >= 1 at low and 0 at high
    for _ in range(200):
        mid = 0.5 * (low + high)
        if np.maximum(v - mid, 0).sum() > 1:
            low = mid
        else:
            high = mid
    return np.maximum(v - 0.5 * (low + high), 0)


def assert_kkt(v: np.ndarray, p: np.ndarray, tol: float) -> None:
    """KKT of min ||p - v||^2 s.t. p >= 0, sum p = 1: one tau with v_i - p_i = tau on the support, v_i <= tau off it."""
    assert (p >= 0).all()
    assert abs(p.sum() - 1) < tol
    support = p > 0
    taus = v[support] - p[support]
    assert np.ptp(taus) < tol
    assert (v[~support] <= taus.mean() + tol).all()


def check_sparsemax(x: torch.Tensor, dim: int, tol: float) -> None:
    out = sparsemax(x, dim=dim)
    assert out.shape == x.shape
    rows_in = np.moveaxis(x.double().numpy(), dim, -1).reshape(-1, x.shape[dim])
    rows_out = np.moveaxis(out.double().numpy(), dim, -1).reshape(-1, x.shape[dim])
    for v, p in zip(rows_in, rows_out):
        np.testing.assert_allclose(p, simplex_projection_bisection(v), atol=tol, rtol=0)
        assert_kkt(v, p, tol)


@pytest.mark.parametrize("dim", [-1, 0, 1, 2])
def test_sparsemax_matches_bisection_and_kkt_on_batched_inputs(dim: int) -> None:
    x = torch.randn(4, 5, 7, generator=torch.Generator().manual_seed(dim + 10), dtype=torch.float64) * 0.7
    check_sparsemax(x, dim, 1e-10)


def test_sparsemax_with_ties() -> None:
    x = torch.tensor(
        [[1.0, 1.0, 1.0, 0.0], [2.0, 2.0, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3], [0.0, -0.5, -0.5, -3.0]],
        dtype=torch.float64,
    )
    check_sparsemax(x, -1, 1e-12)
    np.testing.assert_allclose(sparsemax(x)[0].numpy(), [1 / 3, 1 / 3, 1 / 3, 0], atol=1e-15)
    np.testing.assert_allclose(sparsemax(x)[1].numpy(), [0.5, 0.5, 0, 0], atol=1e-15)
    np.testing.assert_allclose(sparsemax(x)[2].numpy(), [0.25] * 4, atol=1e-15)


def test_sparsemax_large_inputs() -> None:
    offsets = torch.tensor([[0.0, 0.3, 0.5, -2.0, 0.45], [0.2, 0.1, 0.0, -0.1, -0.2]], dtype=torch.float64)
    check_sparsemax(1e6 + offsets, -1, 1e-9)
    check_sparsemax(-1e6 + offsets, -1, 1e-9)
    spread = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1e6
    check_sparsemax(spread, -1, 1e-9)
    assert ((sparsemax(spread) > 0).sum(-1) == 1).all()  # gaps of ~1e6 leave only the maximum
    # float32 too: the same (already rounded) values, projected in float32
    x32 = (1e6 + offsets).float()
    check_sparsemax(x32, -1, 1e-5)


def test_sparsemax_tiny_spreads() -> None:
    noise = torch.randn(3, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x = 0.75 + 1e-8 * noise
    check_sparsemax(x, -1, 1e-14)
    # every entry in the support, p = 1/K + (x - mean x) exactly
    expected = 1 / 8 + (x - x.mean(-1, keepdim=True))
    np.testing.assert_allclose(sparsemax(x).numpy(), expected.numpy(), atol=1e-15)


def test_sparsemax_half_precision_and_negative_infinity() -> None:
    x = torch.tensor([[0.5, -0.1, float("-inf"), 0.45]])
    np.testing.assert_allclose(sparsemax(x).numpy(), [[0.525, 0.0, 0.0, 0.475]], atol=1e-6)
    xb = torch.tensor([[1.0, 0.5, -1.0]], dtype=torch.bfloat16)
    out = sparsemax(xb)
    assert out.dtype == torch.bfloat16
    np.testing.assert_allclose(out.float().numpy(), [[0.75, 0.25, 0.0]], atol=1e-2)


# --------------------------------------------------------------------------------------------------------------------
# virtual_temperature_loglik
# --------------------------------------------------------------------------------------------------------------------


def loglik_numpy(logits: np.ndarray, tokens: np.ndarray, mask: np.ndarray, temps: list[float]) -> np.ndarray:
    """Per token, per temperature, in float64 with an explicit log-sum-exp; then the masked mean per row."""
    rows, length, _ = logits.shape
    out = np.zeros((rows, len(temps)))
    for i in range(rows):
        for k, t in enumerate(temps):
            values = []
            for pos in range(length):
                if mask[i, pos]:
                    scaled = logits[i, pos] / t
                    top = scaled.max()
                    log_norm = top + np.log(np.exp(scaled - top).sum())
                    values.append(scaled[tokens[i, pos]] - log_norm)
            out[i, k] = np.mean(values) if values else 0.0
    return out


def random_batch(rows: int = 5, length: int = 6, vocab: int = 50, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, length, vocab, generator=gen) * 3
    tokens = torch.randint(vocab, (rows, length), generator=gen)
    mask = (torch.rand(rows, length, generator=gen) > 0.3).long()
    mask[0] = 1
    mask[1] = 0  # a row with no counted token
    return logits, tokens, mask


def test_virtual_loglik_matches_numpy_per_token_computation() -> None:
    logits, tokens, mask = random_batch()
    temps = [0.6, 0.9, 1.0, 1.5]
    expected = loglik_numpy(logits.double().numpy(), tokens.numpy(), mask.numpy(), temps)
    got = virtual_temperature_loglik(logits, tokens, mask, torch.tensor(temps))
    assert got.shape == (5, 4)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert (got[1] == 0).all()


@pytest.mark.parametrize("chunk", [1, 7, 49, 50, 51])
def test_virtual_loglik_chunked_equals_unchunked(chunk: int) -> None:
    logits, tokens, mask = random_batch(seed=3)
    temps = torch.tensor(CANDIDATES)
    whole = virtual_temperature_loglik(logits, tokens, mask, temps, vocab_chunk=8192)
    np.testing.assert_allclose(
        virtual_temperature_loglik(logits, tokens, mask, temps, vocab_chunk=chunk).numpy(),
        whole.numpy(),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.parametrize("tile", [1, 13, 120, 1 << 18])
@pytest.mark.parametrize("chunk", [7, 50])
def test_virtual_loglik_tiles_over_positions_match_numpy(
    tile: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small tiles split rows and positions (partial last tiles included); large ones take several whole rows
    monkeypatch.setattr(tampo, "_TILE_ELEMENTS", tile)
    logits, tokens, mask = random_batch(rows=7, length=9, seed=6)
    temps = [0.6, 1.1, 1.5]
    expected = loglik_numpy(logits.double().numpy(), tokens.numpy(), mask.numpy(), temps)
    got = virtual_temperature_loglik(logits, tokens, mask, torch.tensor(temps), vocab_chunk=chunk)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_virtual_loglik_bfloat16_logits_and_extreme_values() -> None:
    logits, tokens, mask = random_batch(seed=4)
    logits[0, 0, 3] = 80.0  # far larger than the rest: the shared maximum must keep exp() finite
    logits = logits.bfloat16()
    temps = [0.6, 1.5]
    expected = loglik_numpy(logits.double().numpy(), tokens.numpy(), mask.numpy(), temps)
    got = virtual_temperature_loglik(logits, tokens, mask, torch.tensor(temps), vocab_chunk=7)
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-4)


def test_virtual_loglik_rejects_bad_shapes() -> None:
    logits, tokens, mask = random_batch()
    with pytest.raises(ValueError, match="tokens"):
        virtual_temperature_loglik(logits, tokens[:, :3], mask, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="positive"):
        virtual_temperature_loglik(logits, tokens, mask, torch.tensor([0.0, 1.0]))


# --------------------------------------------------------------------------------------------------------------------
# tampo_meta_update
# --------------------------------------------------------------------------------------------------------------------


def test_meta_update_hand_worked_example() -> None:
    # Four trajectories, two groups, K = 3 candidates. Sparsemax of each row, worked by hand:
    #   [ 0.0, -2.0, -3.0] -> k*=1, tau=-1.0  -> [1,    0,     0   ]
    #   [-1.0, -1.2, -5.0] -> k*=2, tau=-1.6  -> [0.6,  0.4,   0   ]
    #   [-3.0, -2.5, -2.5] -> k*=2, tau=-3.0  -> [0,    0.5,   0.5 ]   (-3.0 sits exactly on tau)
    #   [-2.0, -1.9, -2.1] -> k*=3, tau=-7/3  -> [1/3,  13/30, 7/30]
    # Advantages: group 1 = [+1, -1], group 2 = [+0.5, -0.5].
    # Weighted sum over trajectories: [1 - 0.6 - 1/6, -0.4 + 0.25 - 13/60, 0.25 - 7/60] = [7/30, -11/30, 4/30];
    # batch mean (/4): A_B = [7, -11, 4] / 120 (sums to zero).
    # EMA from [0.1, 0, -0.1] with alpha = 0.05: [235, -11, -224] / 2400.
    # Min-max: [1, 213/459, 0]; normalised: [459, 213, 0] / 672.
    loglik = torch.tensor(
        [[0.0, -2.0, -3.0], [-1.0, -1.2, -5.0], [-3.0, -2.5, -2.5], [-2.0, -1.9, -2.1]], dtype=torch.float64
    )
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5], dtype=torch.float64)
    ema = torch.tensor([0.1, 0.0, -0.1], dtype=torch.float64)

    batch = temperature_advantages(loglik, advantages)
    np.testing.assert_allclose(batch.numpy(), [7 / 120, -11 / 120, 4 / 120], atol=1e-15)

    new_ema, dist = tampo_meta_update(ema, loglik, advantages, alpha=0.05)
    np.testing.assert_allclose(new_ema.numpy(), [235 / 2400, -11 / 2400, -224 / 2400], atol=1e-15)
    expected = [float(Fraction(459, 672)), float(Fraction(213, 672)), 0.0]
    np.testing.assert_allclose(dist.numpy(), expected, atol=1e-14)


def test_meta_update_scale_changes_the_support() -> None:
    # Per-token means close together: scale 1 spreads the weight, scale 100 concentrates it on the best candidate.
    loglik = torch.tensor([[-1.00, -1.05, -1.10]], dtype=torch.float64)
    assert (sparsemax(loglik) > 0).sum() == 3
    wide = temperature_advantages(loglik, torch.tensor([1.0], dtype=torch.float64), scale=1.0)
    sharp = temperature_advantages(loglik, torch.tensor([1.0], dtype=torch.float64), scale=100.0)
    np.testing.assert_allclose(wide.numpy(), [0.3833333333333, 0.3333333333333, 0.2833333333333], atol=1e-12)
    np.testing.assert_allclose(sharp.numpy(), [1.0, 0.0, 0.0], atol=1e-12)


def test_temperature_advantages_are_zero_sum_when_group_advantages_are() -> None:
    gen = torch.Generator().manual_seed(5)
    groups, size, k = 6, 8, 10
    rewards = torch.randint(0, 2, (groups, size), generator=gen).double()
    centred = rewards - rewards.mean(-1, keepdim=True)
    advantages = (centred / (rewards.std(-1, keepdim=True) + 1e-4)).reshape(-1)
    for scale in (1.0, 7.0, 0.1):
        loglik = torch.randn(groups * size, k, generator=gen, dtype=torch.float64)
        batch = temperature_advantages(loglik, advantages, scale)
        assert abs(float(batch.sum())) < 1e-12
        assert float(batch.abs().max()) > 1e-3  # not trivially zero


def test_minmax_normalisation_and_the_all_equal_case() -> None:
    np.testing.assert_allclose(
        minmax_distribution(torch.tensor([2.0, 4.0, 3.0, 2.0], dtype=torch.float64)).numpy(), [0, 2 / 3, 1 / 3, 0]
    )
    np.testing.assert_allclose(minmax_distribution(torch.full((5,), -0.3, dtype=torch.float64)).numpy(), [0.2] * 5)
    ema = torch.zeros(4, dtype=torch.float64)
    loglik = torch.randn(6, 4, dtype=torch.float64)
    new_ema, dist = tampo_meta_update(ema, loglik, torch.zeros(6, dtype=torch.float64), alpha=0.05)
    assert (new_ema == 0).all()
    np.testing.assert_allclose(dist.numpy(), [0.25] * 4)


def test_meta_update_rejects_bad_input() -> None:
    ema = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match="advantages"):
        tampo_meta_update(ema, torch.zeros(4, 3), torch.zeros(5), 0.05)
    with pytest.raises(ValueError, match="alpha"):
        tampo_meta_update(ema, torch.zeros(4, 3), torch.zeros(4), 0.0)
    with pytest.raises(ValueError, match="loglik"):
        tampo_meta_update(ema, torch.zeros(4, 2), torch.zeros(4), 0.05)


# --------------------------------------------------------------------------------------------------------------------
# Behaviour: the distribution moves toward the temperatures that explain the winners
# --------------------------------------------------------------------------------------------------------------------


def explained_trajectories(rows: int, length: int, vocab: int, cold: bool, gen: torch.Generator):
    """Logits and tokens whose likelihood peaks at the coldest candidate (argmax tokens) or the hottest (rare ones)."""
    logits = torch.randn(rows, length, vocab, generator=gen) * 2.0
    ranked = logits.argsort(dim=-1, descending=True)
    # cold: the most likely token every time; hot: a token from the bottom half, whose probability rises with T
    pick = torch.zeros(rows, length, dtype=torch.long) if cold else torch.randint(vocab // 2, vocab, (rows, length))
    tokens = ranked.gather(-1, pick.unsqueeze(-1)).squeeze(-1)
    return logits, tokens


def minimal_rollouts(tokens: torch.Tensor, mask: torch.Tensor, temperature: float) -> Rollouts:
    rows, length = tokens.shape
    return Rollouts(
        prompt_ids=torch.ones(rows, 1, dtype=torch.long),
        prompt_mask=torch.ones(rows, 1, dtype=torch.long),
        completion_ids=tokens,
        completion_mask=mask,
        temperature=torch.full((rows, length), temperature),
        behaviour_logprobs=torch.zeros(rows, length),
        truncated=torch.zeros(rows, dtype=torch.bool),
    )


def run_meta_policy(winners_cold: bool, steps: int = 40) -> tuple[TAMPOController, dict[str, float]]:
    controller = TAMPOController(TAMPOControllerConfig(seed=3))
    temps = torch.tensor(CANDIDATES)
    gen = torch.Generator().manual_seed(11)
    for step in range(steps):
        controller.begin_step(step)
        # each group of 4: two cold-looking and two hot-looking trajectories; the winners get A = +1, losers -1
        cold_logits, cold_tokens = explained_trajectories(8, 12, 30, cold=True, gen=gen)
        hot_logits, hot_tokens = explained_trajectories(8, 12, 30, cold=False, gen=gen)
        logits = torch.cat([cold_logits, hot_logits])
        tokens = torch.cat([cold_tokens, hot_tokens])
        mask = torch.ones_like(tokens)
        sign = 1.0 if winners_cold else -1.0
        advantages = torch.cat([torch.full((8,), sign), torch.full((8,), -sign)])
        loglik = virtual_temperature_loglik(logits, tokens, mask, temps, vocab_chunk=7)
        zeros = torch.zeros(tokens.shape)
        scores = Scores(old_logprobs=zeros, entropy_at_one=zeros, rows={"virtual_loglik": loglik})
        metrics = controller.update(minimal_rollouts(tokens, mask, controller.batch_temperature()), advantages, scores)
    return controller, metrics


def expected_temperature(controller: TAMPOController) -> float:
    return float((controller.distribution * controller.candidates).sum())


def test_distribution_moves_toward_cold_when_cold_trajectories_win() -> None:
    controller, metrics = run_meta_policy(winners_cold=True)
    dist = controller.distribution
    # uniform would give 1.05; min-max keeps a spread, but it is monotone: colder = more probable
    assert expected_temperature(controller) < 0.95
    assert (dist[:-1] >= dist[1:] - 1e-12).all() and float(dist[0]) > 1.5 * float(dist[4])
    assert float(dist[-1]) == 0.0
    assert metrics["temperature/preferred_pos_adv"] == pytest.approx(0.6)
    assert metrics["temperature/preferred_neg_adv"] == pytest.approx(1.5)
    # draws follow: after learning, the top-p 0.7 nucleus leaves out the hot end
    draws = []
    for step in range(40, 240):
        controller.begin_step(step)
        draws.append(controller.batch_temperature())
    assert max(draws) <= 1.2 and np.mean(draws) < 0.9


def test_distribution_moves_toward_hot_when_hot_trajectories_win() -> None:
    controller, metrics = run_meta_policy(winners_cold=False)
    dist = controller.distribution
    assert expected_temperature(controller) > 1.15
    assert (dist[1:] >= dist[:-1] - 1e-12).all() and float(dist[-1]) > 1.5 * float(dist[5])
    assert float(dist[0]) == 0.0
    assert metrics["temperature/preferred_pos_adv"] == pytest.approx(1.5)
    assert 1 <= metrics["temperature/sparsemax_support"] <= 10
    assert metrics["temperature/meta_entropy"] < np.log(10)
    assert set(k for k in metrics if k.startswith("temperature/prob/")) == {
        f"temperature/prob/{t}" for t in ("0.6", "0.7", "0.8", "0.9", "1.0", "1.1", "1.2", "1.3", "1.4", "1.5")
    }


def test_update_without_virtual_loglik_is_a_clear_error() -> None:
    controller = TAMPOController(TAMPOControllerConfig())
    controller.begin_step(0)
    tokens = torch.zeros(2, 3, dtype=torch.long)
    scores = Scores(old_logprobs=torch.zeros(2, 3), entropy_at_one=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="virtual_loglik"):
        controller.update(minimal_rollouts(tokens, torch.ones_like(tokens), 1.0), torch.zeros(2), scores)


def test_scoring_hook_asks_for_the_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    # The old-policy pass hands each micro-batch's logits to the hook; TAMPO scores them at its candidates, in chunks
    # of its vocab_chunk (the interface's scoring request no longer names TAMPO's quantities).
    controller = TAMPOController(TAMPOControllerConfig(vocab_chunk=123))
    seen: dict[str, object] = {}

    def spy(logits, tokens, mask, temperatures, vocab_chunk=8192):
        seen.update(temperatures=temperatures.tolist(), vocab_chunk=vocab_chunk)
        return virtual_temperature_loglik(logits, tokens, mask, temperatures, vocab_chunk=vocab_chunk)

    monkeypatch.setattr(tampo, "virtual_temperature_loglik", spy)
    logits, tokens, mask = random_batch()
    rows = controller.score_micro_batch(logits, None, minimal_rollouts(tokens, mask, 1.0))
    assert seen["temperatures"] == pytest.approx(CANDIDATES) and seen["vocab_chunk"] == 123
    expected = virtual_temperature_loglik(logits, tokens, mask, torch.tensor(CANDIDATES), vocab_chunk=123)
    assert torch.equal(rows["virtual_loglik"], expected)


# --------------------------------------------------------------------------------------------------------------------
# nucleus_draw
# --------------------------------------------------------------------------------------------------------------------


def smallest_reaching_size(probs: list[float], top_p: float) -> int:
    """Brute force: the size of the smallest subset (any subset) whose probability reaches top_p."""
    for size in range(1, len(probs) + 1):
        if any(
            sum(probs[i] for i in subset) >= top_p - 1e-12 for subset in itertools.combinations(range(len(probs)), size)
        ):
            return size
    raise AssertionError("unreachable: the full set has probability 1")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("top_p", [0.3, 0.5, 0.7, 0.9, 1.0])
def test_nucleus_keeps_the_smallest_set_reaching_top_p(seed: int, top_p: float) -> None:
    probs = torch.rand(6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) ** 2
    probs = probs / probs.sum()
    keep = nucleus_keep(probs, top_p)
    size = smallest_reaching_size(probs.tolist(), top_p)
    assert int(keep.sum()) == size
    assert float(probs[keep].sum()) >= top_p - 1e-12
    # and it is those of highest probability: every kept one beats every dropped one
    if size < 6:
        assert float(probs[keep].min()) > float(probs[~keep].max())


def test_nucleus_draws_follow_the_renormalised_kept_set() -> None:
    probs = torch.tensor([0.05, 0.40, 0.10, 0.25, 0.20], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    draws = np.array([nucleus_draw(probs, 0.7, gen) for _ in range(10000)])
    # kept: 0.40 + 0.25 = 0.65 < 0.7, so 0.20 joins: {1, 3, 4}, renormalised by 0.85
    assert set(np.unique(draws)) == {1, 3, 4}
    freq = np.bincount(draws, minlength=5) / len(draws)
    np.testing.assert_allclose(freq[[1, 3, 4]], [0.40 / 0.85, 0.25 / 0.85, 0.20 / 0.85], atol=0.02)


def test_nucleus_top_p_zero_is_argmax_and_ties_are_fair() -> None:
    gen = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.2, 0.1, 0.5, 0.2], dtype=torch.float64)
    assert {nucleus_draw(probs, 0.0, gen) for _ in range(50)} == {2}
    # uniform over 10 with top-p 0.7 keeps 7, but which 7 is random: every candidate is drawn about equally often
    uniform = torch.full((10,), 0.1, dtype=torch.float64)
    draws = np.array([nucleus_draw(uniform, 0.7, gen) for _ in range(10000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=10) / len(draws), [0.1] * 10, atol=0.02)
    # a zero-probability candidate is never drawn, even at top-p 1
    probs = torch.tensor([0.5, 0.0, 0.5], dtype=torch.float64)
    assert 1 not in {nucleus_draw(probs, 1.0, gen) for _ in range(200)}


def test_warmup_draws_are_uniform_over_all_candidates() -> None:
    controller = TAMPOController(TAMPOControllerConfig(warmup_steps=10**6, top_p=0.1, seed=4))
    # even a very peaked distribution is ignored during warm-up
    controller.distribution = torch.tensor([1.0] + [0.0] * 9, dtype=torch.float64)
    draws = []
    for step in range(20000):
        controller.begin_step(step)
        draws.append(CANDIDATES.index(controller.batch_temperature()))
    np.testing.assert_allclose(np.bincount(draws, minlength=10) / len(draws), [0.1] * 10, atol=0.02)
    controller.config.warmup_steps = 0
    controller.begin_step(0)
    assert controller.batch_temperature() == 0.6


# --------------------------------------------------------------------------------------------------------------------
# Exact resume
# --------------------------------------------------------------------------------------------------------------------


def drive(controller: TAMPOController, steps: range, seed: int) -> list[tuple[float, list[float]]]:
    """begin_step + update on random (seeded) batches; the draws and the EMA after each step."""
    gen = torch.Generator().manual_seed(seed)
    history = []
    for step in steps:
        controller.begin_step(step)
        loglik = torch.randn(16, 10, generator=gen) * 0.3
        advantages = torch.randn(16, generator=gen)
        tokens = torch.zeros(16, 2, dtype=torch.long)
        scores = Scores(
            old_logprobs=torch.zeros(16, 2), entropy_at_one=torch.zeros(16, 2), rows={"virtual_loglik": loglik}
        )
        controller.update(minimal_rollouts(tokens, torch.ones_like(tokens), 1.0), advantages, scores)
        history.append((controller.batch_temperature(), controller.ema.tolist()))
    return history


def test_state_dict_round_trip_gives_identical_subsequent_draws() -> None:
    config = TAMPOControllerConfig(warmup_steps=3, seed=7)
    original = TAMPOController(config)
    drive(original, range(0, 10), seed=1)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    continued = drive(original, range(10, 40), seed=2)

    resumed = TAMPOController(copy.deepcopy(config))
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert drive(resumed, range(10, 40), seed=2) == continued
    assert len({t for t, _ in continued}) > 1  # the draws are not trivially constant

    fresh = TAMPOController(copy.deepcopy(config))  # without the state the draws differ
    assert drive(fresh, range(10, 40), seed=2) != continued


def test_load_state_dict_refuses_other_candidates() -> None:
    state = TAMPOController(TAMPOControllerConfig()).state_dict()
    other = TAMPOController(TAMPOControllerConfig(candidates=[0.5, 1.0]))
    with pytest.raises(ValueError, match="candidates"):
        other.load_state_dict(state)


def test_bad_config_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"controller\.tampo\.top_p"):
        TAMPOController(TAMPOControllerConfig(top_p=1.5))
    with pytest.raises(ValueError, match=r"controller\.tampo\.candidates"):
        TAMPOController(TAMPOControllerConfig(candidates=[1.0]))
    with pytest.raises(ValueError, match="duplicates"):
        TAMPOController(TAMPOControllerConfig(candidates=[1.0, 1.0]))
