"""Kelvin's KV-cache sampling loop.

At every position it asks the temperature controller for tau of every row, samples from softmax(truncate(z / tau)),
and records the token, tau, the behaviour log-probability and the controller's actions. `model.generate` cannot do
this: its logits processors see one temperature per call and cannot record per-token actions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import DynamicCache, StaticCache

from kelvin.controllers.base import TemperatureController, TokenContext
from kelvin.rl.logprobs import tempered_log_softmax
from kelvin.rl.rollouts import Rollouts


@dataclass
class SamplingSettings:
    max_new_tokens: int
    eos_ids: list[int]
    pad_id: int
    top_p: float = 1.0
    top_k: int = 0
    cache: str = "static"  # "static" or "dynamic"
    greedy: bool = False  # argmax decoding (evaluation); tau is still recorded


def _positions(mask: Tensor) -> Tensor:
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    controller: TemperatureController,
    settings: SamplingSettings,
    step: int = 0,
    generator: torch.Generator | None = None,
    initial_temperature: float = 1.0,
) -> Rollouts:
    """Sample one completion per row of the left-padded prompt batch."""
    device = prompt_ids.device
    batch, prompt_len = prompt_ids.shape
    max_new = settings.max_new_tokens
    want_hidden = controller.needs_hidden_state
    was_training = model.training
    model.eval()

    if settings.cache == "static":
        cache = StaticCache(config=model.config, max_cache_len=prompt_len + max_new)
    else:
        cache = DynamicCache()
    full_mask = torch.cat([prompt_mask.long(), torch.zeros(batch, max_new, dtype=torch.long, device=device)], dim=1)
    eos = torch.tensor(settings.eos_ids, device=device)

    tokens = torch.full((batch, max_new), settings.pad_id, dtype=torch.long, device=device)
    taus = torch.empty(batch, max_new, dtype=torch.float32, device=device)
    logps = torch.zeros(batch, max_new, dtype=torch.float32, device=device)
    mask = torch.zeros(batch, max_new, dtype=torch.long, device=device)
    actions: dict[str, Tensor] = {}
    active = torch.ones(batch, dtype=torch.bool, device=device)
    prev_tau = torch.full((batch,), float(initial_temperature), dtype=torch.float32, device=device)

    out = model(
        input_ids=prompt_ids,
        attention_mask=full_mask[:, :prompt_len],
        position_ids=_positions(prompt_mask),
        past_key_values=cache,
        use_cache=True,
        cache_position=torch.arange(prompt_len, device=device),
        output_hidden_states=want_hidden,
        logits_to_keep=1,
    )
    next_pos = prompt_mask.long().sum(-1)
    length = 0
    for t in range(max_new):
        logits = out.logits[:, -1, :].float()
        hidden = out.hidden_states[-1][:, -1, :] if want_hidden else None
        ctx = TokenContext(
            step=step, position=t, previous_temperature=prev_tau, logits=logits, hidden=hidden, active=active
        )
        choice = controller.token_temperature(ctx)
        tau = torch.where(active, choice.temperature.float(), prev_tau)
        logp = tempered_log_softmax(logits, tau, settings.top_p, settings.top_k)
        if settings.greedy:
            token = logits.argmax(-1)
        else:
            token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        token = torch.where(active, token, torch.full_like(token, settings.pad_id))
        tokens[:, t] = token
        taus[:, t] = tau
        logps[:, t] = torch.where(active, logp.gather(-1, token.unsqueeze(-1)).squeeze(-1), torch.zeros_like(tau))
        mask[:, t] = active.long()
        for name, value in choice.actions.items():
            if name not in actions:
                actions[name] = torch.zeros(batch, max_new, dtype=value.dtype, device=device)
            actions[name][:, t] = torch.where(active, value, torch.zeros_like(value))
        prev_tau = tau
        length = t + 1
        active = active & ~torch.isin(token, eos)
        if not bool(active.any()) or t == max_new - 1:
            break
        full_mask[:, prompt_len + t] = 1
        out = model(
            input_ids=token.unsqueeze(-1),
            attention_mask=full_mask[:, : prompt_len + t + 1],
            position_ids=next_pos.unsqueeze(-1),
            past_key_values=cache,
            use_cache=True,
            cache_position=torch.tensor([prompt_len + t], device=device),
            output_hidden_states=want_hidden,
        )
        next_pos = next_pos + 1

    if was_training:
        model.train()
    return Rollouts(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask.long(),
        completion_ids=tokens[:, :length],
        completion_mask=mask[:, :length],
        temperature=taus[:, :length],
        behaviour_logprobs=logps[:, :length],
        truncated=active.clone(),
        top_p=settings.top_p,
        top_k=settings.top_k,
        actions={k: v[:, :length] for k, v in actions.items()},
    )


def sample_in_chunks(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    controller: TemperatureController,
    settings: SamplingSettings,
    chunk: int,
    step: int = 0,
    generator: torch.Generator | None = None,
    initial_temperature: float = 1.0,
) -> Rollouts:
    """`sample` over row chunks of at most `chunk` (0 = all at once), concatenated."""
    from kelvin.rl.rollouts import concat_rollouts

    if chunk <= 0 or chunk >= prompt_ids.shape[0]:
        return sample(model, prompt_ids, prompt_mask, controller, settings, step, generator, initial_temperature)
    parts = [
        sample(
            model,
            prompt_ids[i : i + chunk],
            prompt_mask[i : i + chunk],
            controller,
            settings,
            step,
            generator,
            initial_temperature,
        )
        for i in range(0, prompt_ids.shape[0], chunk)
    ]
    return concat_rollouts(parts, settings.pad_id)
