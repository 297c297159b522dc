"""Log-probabilities of tokens under the tempered (and optionally truncated) distribution.

This is the single place where logits meet a temperature. The sampler draws from `tempered_log_softmax`, and the
loss, the reference model, the entropy and the controllers all call the same function with the *recorded* tau, so a
sampled token's probability can only ever be computed one way (DESIGN section 1). Top-k / top-p truncation is
replayed here exactly as the sampler applied it.
"""

from __future__ import annotations

import torch
from torch import Tensor

NEG_INF = float("-inf")


def truncate_logits(scaled: Tensor, top_p: float = 1.0, top_k: int = 0) -> Tensor:
    """Mask (to -inf) tokens outside top-k and outside the nucleus of `scaled` (already divided by tau).

    The nucleus is the smallest set of most-likely tokens whose probability reaches `top_p`; at least one token is
    always kept. Ties at the boundary are broken by token id (a stable sort), identically in sampler and loss.
    """
    if top_k and top_k < scaled.shape[-1]:
        kth = torch.topk(scaled, top_k, dim=-1).values[..., -1:]
        scaled = scaled.masked_fill(scaled < kth, NEG_INF)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(scaled, dim=-1, descending=True, stable=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = mass_before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scaled = scaled.masked_fill(drop, NEG_INF)
    return scaled


def tempered_log_softmax(logits: Tensor, temperature: Tensor, top_p: float = 1.0, top_k: int = 0) -> Tensor:
    """log softmax(truncate(z / tau)) over the last dim; `temperature` broadcasts against logits[..., 0]."""
    scaled = logits.float() / temperature.float().unsqueeze(-1)
    if top_p < 1.0 or top_k:
        scaled = truncate_logits(scaled, top_p, top_k)
    return torch.log_softmax(scaled, dim=-1)


def token_logprobs_and_entropy(
    logits: Tensor,
    tokens: Tensor,
    temperature: Tensor,
    top_p: float = 1.0,
    top_k: int = 0,
    with_entropy: bool = True,
) -> tuple[Tensor, Tensor | None]:
    """Per-token log pi(y_t) and entropy of the sampling distribution, both at the recorded tau.

    logits [..., V], tokens [...], temperature [...] -> (logprobs [...], entropy [...] or None)
    """
    logp = tempered_log_softmax(logits, temperature, top_p, top_k)
    chosen = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return chosen, None
    p = logp.exp()
    entropy = -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)
    return chosen, entropy


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim (T = 1, no truncation)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)
