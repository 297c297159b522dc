"""TAMPO: the sampling temperature as a meta-policy over K candidates (Dang et al., arXiv 2602.11779, ICLR 2026).

One temperature T_s per training step, shared by every prompt and group member of the batch, drawn from a categorical
meta-policy pi over candidates {T_1..T_K} (default {0.6, 0.7, ..., 1.5}) by nucleus sampling with top-p 0.7.
After the rewards, with A_i the GRPO advantage of trajectory i (research/papers.md section 1.3, paper Eqs. 7-12):

    l_k(tau_i)  = mean over completion tokens t of  log_softmax(z_t / T_k)[y_t]          virtual-temperature likelihood
    w_i         = sparsemax_k(scale * l(tau_i))                                          zero for irrelevant T_k
    A_B[k]      = mean over all trajectories i of the batch  w_i[k] * A_i                temperature advantage
    Abar        = (1 - alpha) * Abar + alpha * A_B                                       EMA, alpha = 0.05
    pi          = minmax(Abar) / sum(minmax(Abar))                                       used from the next step

No extra rollouts and no extra forward pass: z are the old-policy logits that the trainer's old-log-prob pass computes
anyway; its `score_micro_batch` hook calls `virtual_temperature_loglik` on them, collected as
`Scores.rows['virtual_loglik']`.

Choices the paper leaves open (research/papers.md sections 1.3, 1.4 and 1.7), made here and configurable where
marked:

* theta_old for rescoring: l_k uses the trainer's old-policy logits (before this step's update), the cheapest choice
  and the one that needs no second pass. The paper does not say which parameters it used (papers.md 1.3).
* scale before sparsemax: `controller.tampo.sparsemax_scale`, default 1 (no rescaling). Sparsemax is shift- but not
  scale-invariant; the support size is logged as `temperature/sparsemax_support` (papers.md 1.3).
* initialisation: Abar_0 = 0, pi_0 uniform (papers.md 1.3, [G]).
* warm-up: `controller.tampo.warmup_steps` steps of uniform draws over all K candidates, default 0. The paper mentions
  a warm-up without describing it (papers.md 1.3). Warm-up draws ignore top-p: a nucleus over a uniform
  distribution would otherwise keep only the candidates that happen to sort first.
* 0/0 in min-max (all Abar equal, e.g. before the first update or after an all-zero-advantage batch): pi uniform.
* ties in the nucleus draw are broken in a random order from the controller's own generator, so a uniform (or
  partly uniform) pi does not favour the low-index candidates; top-p = 0 is the argmax (first index on ties), the
  paper's "greedy" ablation.
* the batch mean runs over every trajectory of the batch, groups whose rewards are all equal included (their A_i = 0
  contributes zero), exactly 1 / (|B| G) of paper Eq. 10.

The meta-policy keeps its own torch.Generator (seeded by `controller.tampo.seed`), so its draws do not depend on or
disturb the sampler's random stream, and `state_dict` restores it exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from kelvin.config import ConfigError, ControllerSection, SamplingConfig, doc
from kelvin.controllers.base import (
    Scores,
    TemperatureController,
    TokenContext,
    TokenTemperature,
    constant,
)
from kelvin.rl.distributed import gather_rows
from kelvin.rl.rollouts import Rollouts


@dataclass
class TAMPOControllerConfig(ControllerSection):
    candidates: list[float] = doc(
        [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5],
        "TAMPO (arXiv 2602.11779): candidate temperatures {0.6, ..., 1.5}, K=10 in the paper.",
    )
    ema_alpha: float = doc(0.05, "TAMPO: EMA coefficient alpha of the temperature advantages (paper: 0.05 best).")
    top_p: float = doc(0.7, "TAMPO: nucleus threshold of the meta-policy draw (paper: 0.7 best; 0 = argmax).")
    sparsemax_scale: float = doc(
        1.0,
        "TAMPO: multiply the per-token mean log-likelihoods by this before sparsemax (not in the paper; "
        "sparsemax is not scale-invariant).",
    )
    warmup_steps: int = doc(0, "TAMPO: steps of uniform draws over the candidates before the meta-policy is used.")
    vocab_chunk: int = doc(8192, "TAMPO: vocabulary chunk for the virtual-temperature logsumexp (memory bound).")
    seed: int = doc(0, "TAMPO: seed of the meta-policy's own random generator.")

    def validate(self, sampling: SamplingConfig) -> None:
        if len(self.candidates) < 2 or any(not t > 0 for t in self.candidates):
            raise ConfigError(f"controller.tampo.candidates={self.candidates} needs >= 2 positive temperatures.")
        if len(set(self.candidates)) != len(self.candidates):
            raise ConfigError(
                f"controller.tampo.candidates={self.candidates} has duplicates; list each temperature once."
            )
        if not 0 < self.ema_alpha <= 1:
            raise ConfigError(f"controller.tampo.ema_alpha={self.ema_alpha} must be in (0, 1]; the paper uses 0.05.")
        if not 0 <= self.top_p <= 1:
            raise ConfigError(
                f"controller.tampo.top_p={self.top_p} must be in [0, 1] (0 = argmax); the paper uses 0.7."
            )
        if not self.sparsemax_scale > 0:
            raise ConfigError(f"controller.tampo.sparsemax_scale={self.sparsemax_scale} must be > 0 (default 1).")
        if self.warmup_steps < 0:
            raise ConfigError(f"controller.tampo.warmup_steps={self.warmup_steps} must be >= 0 (0 = no warm-up).")
        if self.vocab_chunk < 1:
            raise ConfigError(f"controller.tampo.vocab_chunk={self.vocab_chunk} must be >= 1 (default 8192).")


_TIE_TOLERANCE = 1e-12  # float64 slack when comparing cumulative probability with top_p
_TILE_ELEMENTS = 1 << 18  # 1 MiB of float32: a tile of the virtual-temperature sums stays in cache
_LOG2_E = 1.0 / math.log(2.0)


# --------------------------------------------------------------------------------------------------------------------
# Pure functions (each checked against an independent computation in tests/test_tampo.py)
# --------------------------------------------------------------------------------------------------------------------


def sparsemax(x: Tensor, dim: int = -1) -> Tensor:
    """Euclidean projection of `x` onto the probability simplex along `dim` (Martins & Astudillo, 2016).

    Sort descending; k* = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)}; tau = (sum_{j<=k*} z_(j) - 1) / k*;
    p = max(z - tau, 0). The input is shifted by its maximum first (sparsemax is shift-invariant), which keeps the
    cumulative sums small for large inputs. Half-precision inputs are computed in float32.
    """
    if x.dim() == 0:
        raise ValueError("sparsemax needs at least one dimension; got a scalar.")
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    z = work.movedim(dim, -1)
    z = z - z.amax(dim=-1, keepdim=True)
    z_sorted = torch.sort(z, dim=-1, descending=True).values
    cumulative = z_sorted.cumsum(dim=-1)
    ranks = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    # For sorted input the support condition holds on a prefix, so counting it gives k*.
    support_size = (1 + ranks * z_sorted > cumulative).sum(dim=-1, keepdim=True)
    threshold = (cumulative.gather(-1, support_size - 1) - 1) / support_size.to(z.dtype)
    return (z - threshold).clamp_min(0).movedim(-1, dim).to(x.dtype)


@torch.no_grad()
def virtual_temperature_loglik(
    logits: Tensor, tokens: Tensor, mask: Tensor, temperatures: Tensor, vocab_chunk: int = 8192
) -> Tensor:
    """Per-row mean log-likelihood of the given tokens under softmax(logits / T_k), for every candidate T_k.

    logits [N, L, V] (any float dtype), tokens [N, L], mask [N, L] (nonzero = count the position),
    temperatures [K] > 0  ->  [N, K] float32. Rows without an unmasked position give 0.

    log_softmax(z / T)[y] = (z_y - m) / T - log sum_v exp((z_v - m) / T) with m the maximum over the vocabulary,
    so one shared maximum serves every T (1/T > 0) and every exponent is <= 0 (no overflow; the sum is >= 1).
    The sums run over tiles of positions x `vocab_chunk` vocabulary columns and over one candidate at a time:
    besides the input, peak memory is two float32 tiles of at most max(vocab_chunk, 2^18) elements and the
    [N, L, K] accumulator, whatever K and V are. Tiles that fit in cache and exp2 (about 2.5x faster than exp on
    CPU; exp(x) = 2^(x log2 e)) keep the cost near three log_softmax passes over the logits for K = 10.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [N, L, V]; got shape {tuple(logits.shape)}.")
    rows, length, vocab = logits.shape
    if tokens.shape != (rows, length) or mask.shape != (rows, length):
        raise ValueError(
            f"tokens {tuple(tokens.shape)} and mask {tuple(mask.shape)} must both be [N, L] = [{rows}, {length}]."
        )
    if temperatures.dim() != 1 or temperatures.numel() == 0 or bool((temperatures <= 0).any()):
        raise ValueError(f"temperatures must be a non-empty 1-D tensor of positive values; got {temperatures}.")
    if vocab_chunk < 1:
        raise ValueError(f"vocab_chunk={vocab_chunk} must be >= 1 (e.g. 8192).")

    device = logits.device
    inverse_temperatures = [1.0 / float(t) for t in temperatures]
    width = min(vocab_chunk, vocab)
    columns = [(start, min(start + width, vocab)) for start in range(0, vocab, width)]
    tile_rows, tile_length = _tile_shape(rows, length, width)

    row_max = torch.full((rows, length), float("-inf"), dtype=torch.float32, device=device)
    for start, stop in columns:
        torch.maximum(row_max, logits[..., start:stop].amax(dim=-1).float(), out=row_max)
    chosen = logits.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1).float() - row_max  # [N, L], <= 0

    sums = torch.zeros(rows, length, len(inverse_temperatures), dtype=torch.float32, device=device)
    shifted = torch.empty(tile_rows, tile_length, width, dtype=torch.float32, device=device)
    scaled = torch.empty_like(shifted)
    for n0 in range(0, rows, tile_rows):
        n1 = min(n0 + tile_rows, rows)
        for l0 in range(0, length, tile_length):
            l1 = min(l0 + tile_length, length)
            tile_max = row_max[n0:n1, l0:l1].unsqueeze(-1)
            tile_sums = sums[n0:n1, l0:l1]
            for start, stop in columns:
                shifted_tile = shifted[: n1 - n0, : l1 - l0, : stop - start]
                scaled_tile = scaled[: n1 - n0, : l1 - l0, : stop - start]
                torch.sub(logits[n0:n1, l0:l1, start:stop], tile_max, out=shifted_tile)
                for k, inverse in enumerate(inverse_temperatures):
                    torch.mul(shifted_tile, inverse * _LOG2_E, out=scaled_tile)
                    tile_sums[..., k] += scaled_tile.exp2_().sum(dim=-1)

    inverse = torch.tensor(inverse_temperatures, dtype=torch.float32, device=device)
    per_token = chosen.unsqueeze(-1) * inverse - sums.log()  # [N, L, K]
    counted = mask.bool()
    per_token = torch.where(counted.unsqueeze(-1), per_token, torch.zeros((), dtype=per_token.dtype, device=device))
    counts = counted.sum(dim=-1).clamp_min(1).to(per_token.dtype)
    return per_token.sum(dim=1) / counts.unsqueeze(-1)


def _tile_shape(rows: int, length: int, width: int) -> tuple[int, int]:
    """(rows, positions) of a tile with at most max(width, _TILE_ELEMENTS) elements: whole rows when they fit."""
    positions = max(1, _TILE_ELEMENTS // width)
    if positions >= length:
        return min(rows, positions // length), length
    return 1, positions


def temperature_advantages(loglik: Tensor, advantages: Tensor, scale: float = 1.0) -> Tensor:
    """A_B[k] = mean_i sparsemax_k(scale * loglik[i])[k] * advantages[i]  ([N, K], [N] -> [K]; paper Eqs. 9-10)."""
    weights = sparsemax(loglik * scale, dim=-1)
    return (weights * advantages.unsqueeze(-1)).mean(dim=0)


def minmax_distribution(values: Tensor) -> Tensor:
    """(v - min) / (max - min), renormalised to sum to 1 (paper Eqs. 11-12); uniform when max == min."""
    low, high = values.min(), values.max()
    if bool(high == low):
        return torch.full_like(values, 1.0 / values.numel())
    normalised = (values - low) / (high - low)
    return normalised / normalised.sum()


def tampo_meta_update(
    ema: Tensor, loglik: Tensor, advantages: Tensor, alpha: float, scale: float = 1.0
) -> tuple[Tensor, Tensor]:
    """One TAMPO meta-step: (new EMA of the temperature advantages, new meta-distribution).

    ema [K], loglik [N, K] (virtual-temperature mean log-likelihoods), advantages [N] -> ([K], [K]), in ema's dtype.
    """
    if ema.dim() != 1 or loglik.dim() != 2 or loglik.shape[1] != ema.shape[0]:
        raise ValueError(f"ema must be [K] and loglik [N, K]; got {tuple(ema.shape)} and {tuple(loglik.shape)}.")
    if advantages.shape != (loglik.shape[0],):
        raise ValueError(
            f"advantages must be one value per trajectory, [N] = [{loglik.shape[0]}]; got {tuple(advantages.shape)}."
        )
    if loglik.shape[0] == 0:
        raise ValueError("tampo_meta_update needs at least one trajectory; the batch is empty.")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha={alpha} must be in (0, 1]; the paper uses 0.05.")
    batch = temperature_advantages(loglik.to(ema.dtype), advantages.to(ema.dtype), scale)
    new_ema = (1 - alpha) * ema + alpha * batch
    return new_ema, minmax_distribution(new_ema)


def nucleus_keep(probs: Tensor, top_p: float, order: Tensor | None = None) -> Tensor:
    """Boolean mask of the nucleus: the smallest set of most probable entries whose probability reaches `top_p`.

    `order` (a permutation of the indices) breaks ties between equal probabilities: among equals, the one earlier in
    `order` counts as more probable. Default: index order. top_p = 0 keeps the single most probable entry.
    """
    p = probs.double() / probs.double().sum()
    if order is None:
        order = torch.arange(p.numel())
    ranked = torch.sort(p[order], descending=True, stable=True)
    sorted_probs, sorted_index = ranked.values, order[ranked.indices]
    mass_before = sorted_probs.cumsum(0) - sorted_probs
    keep_sorted = (mass_before < top_p - _TIE_TOLERANCE) & (sorted_probs > 0)
    keep_sorted[0] = True
    keep = torch.zeros_like(keep_sorted)
    keep[sorted_index] = keep_sorted
    return keep


def nucleus_draw(probs: Tensor, top_p: float, generator: torch.Generator | None) -> int:
    """Index drawn by nucleus sampling: keep the nucleus (`nucleus_keep`), renormalise, draw. top_p = 0: argmax.

    Ties are ordered by a random permutation from `generator`, so equal candidates are equally likely to be kept.
    """
    if probs.dim() != 1 or probs.numel() == 0:
        raise ValueError(f"probs must be a non-empty 1-D tensor; got shape {tuple(probs.shape)}.")
    if bool((probs < 0).any()) or not float(probs.sum()) > 0 or not bool(torch.isfinite(probs).all()):
        raise ValueError(f"probs must be finite, >= 0 and not all zero; got {probs.tolist()}.")
    if not 0 <= top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in [0, 1] (0 = argmax).")
    if top_p == 0:
        return int(torch.argmax(probs))
    order = torch.randperm(probs.numel(), generator=generator)
    keep = nucleus_keep(probs, top_p, order)
    kept = torch.where(keep, probs.double(), torch.zeros((), dtype=torch.float64))
    return int(torch.multinomial(kept / kept.sum(), 1, generator=generator))


def format_temperature(value: float) -> str:
    """0.6 -> '0.6', 1.0 -> '1.0', 1.25 -> '1.25' (metric names)."""
    return repr(round(float(value), 6))


# --------------------------------------------------------------------------------------------------------------------
# The controller
# --------------------------------------------------------------------------------------------------------------------


class TAMPOController(TemperatureController):
    """Batch-level temperature drawn from TAMPO's meta-policy; updated from the virtual-temperature likelihoods."""

    name = "tampo"
    batch_level = True

    def __init__(self, cfg: TAMPOControllerConfig) -> None:
        cfg.validate(SamplingConfig())
        self.config = cfg
        self.candidates = torch.tensor(cfg.candidates, dtype=torch.float64)
        count = len(cfg.candidates)
        self.ema = torch.zeros(count, dtype=torch.float64)
        self.distribution = torch.full((count,), 1.0 / count, dtype=torch.float64)
        self.generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        self.step = 0
        self.chosen_index: int | None = None
        self.last_update: dict[str, float] = {}

    # -- sampling ------------------------------------------------------------------------------------------------

    def begin_step(self, step: int) -> None:
        """Draw this step's T_s: uniform over all candidates during warm-up, then from the meta-policy."""
        self.step = step
        if step < self.config.warmup_steps:
            self.chosen_index = int(torch.randint(len(self.candidates), (1,), generator=self.generator))
        else:
            self.chosen_index = nucleus_draw(self.distribution, self.config.top_p, self.generator)

    def batch_temperature(self) -> float:
        if self.chosen_index is None:
            raise RuntimeError("TAMPOController.batch_temperature() before begin_step(step): no temperature drawn yet.")
        return float(self.candidates[self.chosen_index])

    def token_temperature(self, ctx: TokenContext) -> TokenTemperature:
        return constant(self.batch_temperature(), ctx)

    def score_micro_batch(self, logits: Tensor, hidden: Tensor | None, micro: Rollouts) -> dict[str, Tensor]:
        """The mean log-likelihood of each row's sampled tokens at every candidate temperature, [b, K]."""
        temps = torch.tensor(self.config.candidates, dtype=torch.float32, device=logits.device)
        loglik = virtual_temperature_loglik(
            logits, micro.completion_ids, micro.completion_mask, temps, vocab_chunk=self.config.vocab_chunk
        )
        return {"virtual_loglik": loglik}

    # -- learning ------------------------------------------------------------------------------------------------

    def update(self, rollouts: Rollouts, advantages: Tensor, scores: Scores) -> dict[str, float]:
        """EMA meta-update from this batch; the new distribution is used from the next `begin_step`."""
        loglik = scores.rows.get("virtual_loglik")
        if loglik is None:
            raise ValueError(
                "TAMPO needs Scores.rows['virtual_loglik'] [B, K]: the old-policy pass collects it from "
                "score_micro_batch on every micro-batch."
            )
        if loglik.shape != (advantages.shape[0], len(self.candidates)):
            raise ValueError(
                f"Scores.rows['virtual_loglik'] has shape {tuple(loglik.shape)}; expected [B, K] = "
                f"[{advantages.shape[0]}, {len(self.candidates)}] (one row per trajectory, one column per candidate)."
            )
        # Every process must apply the same update from the whole batch, or the meta-policies drift apart.
        loglik = gather_rows(loglik.detach().float()).to("cpu", torch.float64)
        advantages = gather_rows(advantages.detach().float()).to("cpu", torch.float64)
        self.ema, self.distribution = tampo_meta_update(
            self.ema, loglik, advantages, self.config.ema_alpha, self.config.sparsemax_scale
        )
        self.last_update = self._update_statistics(loglik, advantages)
        return self.metrics()

    def _update_statistics(self, loglik: Tensor, advantages: Tensor) -> dict[str, float]:
        weights = sparsemax(loglik * self.config.sparsemax_scale, dim=-1)
        preferred = self.candidates[loglik.argmax(dim=-1)]  # T*_i, paper Eq. 8
        stats = {"temperature/sparsemax_support": float((weights > 0).sum(dim=-1).double().mean())}
        # Omitted (not NaN) when the batch has no trajectory of that sign, so metric files stay valid JSON.
        for key, rows in (("preferred_pos_adv", advantages > 0), ("preferred_neg_adv", advantages < 0)):
            if bool(rows.any()):
                stats[f"temperature/{key}"] = float(preferred[rows].mean())
        return stats

    def metrics(self) -> dict[str, float]:
        """The step's T_s, the current meta-distribution (after the latest update) and the latest update's stats."""
        out: dict[str, float] = {}
        if self.chosen_index is not None:
            out["temperature/chosen"] = self.batch_temperature()
        for value, prob in zip(self.config.candidates, self.distribution.tolist()):
            out[f"temperature/prob/{format_temperature(value)}"] = prob
        positive = self.distribution[self.distribution > 0]
        out["temperature/meta_entropy"] = float(-(positive * positive.log()).sum())
        out.update(self.last_update)
        return out

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "candidates": list(self.config.candidates),
            "ema": self.ema.clone(),
            "distribution": self.distribution.clone(),
            "generator": self.generator.get_state(),
            "step": self.step,
            "chosen_index": -1 if self.chosen_index is None else self.chosen_index,
            "last_update": dict(self.last_update),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = [float(x) for x in state["candidates"]]
        if not _same_candidates(saved, self.config.candidates):
            raise ValueError(
                f"The checkpoint's TAMPO candidates {saved} differ from controller.tampo.candidates="
                f"{list(self.config.candidates)}; resume with the candidates the run started with."
            )
        self.ema = state["ema"].to(torch.float64).clone()
        self.distribution = state["distribution"].to(torch.float64).clone()
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.chosen_index = None if int(state["chosen_index"]) < 0 else int(state["chosen_index"])
        self.last_update = dict(state["last_update"])


def _same_candidates(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=0, abs_tol=1e-9) for x, y in zip(a, b))
