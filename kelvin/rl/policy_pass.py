"""Forward passes over rollouts: per-token log-probs at the recorded tau, and what controllers asked for.

One forward of the policy per micro-batch serves the loss, the old-policy log-probs (before the optimizer step of
the first pass nothing has changed, so the detached log-probs *are* the old policy, as in TRL), the entropy, the
sampler consistency check, and the controller's scores (its `score_micro_batch` hook sees this pass's logits and
hidden states) — no extra forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from kelvin.controllers.base import Scores, ScoringRequest
from kelvin.rl.logprobs import entropy_from_logits, token_logprobs_and_entropy
from kelvin.rl.rollouts import Rollouts


def trim(rollouts: Rollouts) -> Rollouts:
    """Drop prompt columns that are padding in every row and completion columns past the longest completion."""
    keep_prompt = rollouts.prompt_mask.any(dim=0).nonzero()
    start = int(keep_prompt[0]) if len(keep_prompt) else 0
    width = int(rollouts.completion_mask.sum(dim=1).max().clamp(min=1))
    r = rollouts.select(slice(None))
    r.prompt_ids, r.prompt_mask = r.prompt_ids[:, start:], r.prompt_mask[:, start:]
    r.completion_ids, r.completion_mask = r.completion_ids[:, :width], r.completion_mask[:, :width]
    r.temperature, r.behaviour_logprobs = r.temperature[:, :width], r.behaviour_logprobs[:, :width]
    r.actions = {k: v[:, :width] for k, v in r.actions.items()}
    return r


def completion_logits(model: torch.nn.Module, r: Rollouts, hidden: bool = False) -> tuple[Tensor, Tensor | None]:
    """Logits [B, L, V] that predict each completion token (and last-layer hidden states [B, L, d] if asked)."""
    attention = r.attention_mask
    positions = (attention.long().cumsum(-1) - 1).clamp(min=0)
    width = r.completion_ids.shape[1]
    out = model(
        input_ids=r.input_ids,
        attention_mask=attention,
        position_ids=positions,
        logits_to_keep=width + 1,
        output_hidden_states=hidden,
        use_cache=False,
    )
    logits = out.logits[:, :-1, :]
    states = out.hidden_states[-1][:, -width - 1 : -1, :] if hidden else None
    return logits, states


# A controller's scoring hook: (detached logits [b, l, V], hidden states [b, l, d] or None, micro-batch) -> per-row
# tensors [b, ...]. `TemperatureController.score_micro_batch` has this signature.
ScoreHook = Callable[[Tensor, Tensor | None, Rollouts], dict[str, Tensor]]


@dataclass
class PassOutput:
    logprobs: Tensor  # [B, L] at the recorded tau (with grad when the pass had grad)
    entropy: Tensor  # [B, L] entropy of the sampling distribution at the recorded tau
    entropy_at_one: Tensor  # [B, L] entropy of softmax(z), detached
    hidden_states: Tensor | None  # [B, L, d], detached
    rows: dict[str, Tensor] = field(default_factory=dict)  # the scoring hook's per-row outputs [B, ...]


def policy_pass(
    model: torch.nn.Module,
    r: Rollouts,
    request: ScoringRequest,
    with_entropy: bool = True,
    score: ScoreHook | None = None,
) -> PassOutput:
    """Forward one (trimmed) micro-batch and compute everything the loss and the controller need from it."""
    logits, states = completion_logits(model, r, hidden=request.hidden_states)
    logprobs, entropy = token_logprobs_and_entropy(
        logits, r.completion_ids, r.temperature, r.top_p, r.top_k, with_entropy=with_entropy
    )
    # Padding tokens can fall outside a top-k/top-p set (log-prob -inf); zero them so that -inf - -inf never
    # reaches a ratio. Masked positions carry no loss, and masked_fill passes them no gradient.
    logprobs = logprobs.masked_fill(~r.completion_mask.bool(), 0.0)
    with torch.no_grad():
        detached = logits.detach()
        at_one = entropy_from_logits(detached)
        hidden = None if states is None else states.detach()
        rows = score(detached, hidden, r) if score is not None else {}
    if entropy is None:
        entropy = torch.zeros_like(logprobs)
    return PassOutput(
        logprobs=logprobs,
        entropy=entropy,
        entropy_at_one=at_one,
        hidden_states=hidden,
        rows=rows,
    )


def pad_to(x: Tensor, width: int, value: float = 0.0) -> Tensor:
    """Right-pad dim 1 of x to `width` (micro-batches are trimmed; the batch tensors are not)."""
    extra = width - x.shape[1]
    if extra <= 0:
        return x
    pad = [0, 0] * (x.dim() - 2) + [0, extra]
    return torch.nn.functional.pad(x, pad, value=value)


def assemble_scores(parts: list[PassOutput], old_logprobs: Tensor, width: int) -> Scores:
    """Concatenate per-micro-batch pass outputs (padded back to the batch width) into the controller's Scores."""
    hidden = [p.hidden_states for p in parts]
    return Scores(
        old_logprobs=old_logprobs,
        entropy_at_one=torch.cat([pad_to(p.entropy_at_one, width) for p in parts]),
        hidden_states=torch.cat([pad_to(h, width) for h in hidden]) if all(h is not None for h in hidden) else None,
        rows={k: torch.cat([p.rows[k] for p in parts]) for k in parts[0].rows} if parts else {},
    )


def reference_logprobs(reference: torch.nn.Module | None, policy: torch.nn.Module, r: Rollouts) -> Tensor:
    """Log-probs [B, L] of the completion tokens under the frozen reference (the base model under LoRA)."""
    with torch.no_grad():
        if reference is not None:
            logits, _ = completion_logits(reference, r)
        else:  # LoRA: the base model is the reference
            with policy.disable_adapter():  # type: ignore[operator]
                logits, _ = completion_logits(policy, r)
        # The reference is the untruncated tempered distribution (as NeMo-RL): a truncated reference would give
        # -inf log-probs, and an infinite KL, for tokens the frozen model would not have kept.
        logp, _ = token_logprobs_and_entropy(logits, r.completion_ids, r.temperature, with_entropy=False)
        logp = logp.masked_fill(~r.completion_mask.bool(), 0.0)
    return logp
