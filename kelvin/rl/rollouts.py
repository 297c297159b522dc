"""The record a rollout batch carries from the sampler to the loss and the controller (DESIGN section 1).

`temperature[b, t]` is the temperature that sampled completion token t of row b. It is filled for every generated
token whatever the controller, and it is the only temperature any later log-probability of that token may use.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor


@dataclass
class Rollouts:
    prompt_ids: Tensor  # [B, P] left-padded prompt tokens
    prompt_mask: Tensor  # [B, P] 1 for real prompt tokens
    completion_ids: Tensor  # [B, L] sampled tokens, right-padded with the pad id
    completion_mask: Tensor  # [B, L] 1 for generated tokens up to and including EOS
    temperature: Tensor  # [B, L] float32, the tau that sampled each token (padding repeats the last tau)
    behaviour_logprobs: Tensor  # [B, L] log-prob of each sampled token under the sampler's distribution
    truncated: Tensor  # [B] bool: hit max_completion_length without EOS
    top_p: float = 1.0  # truncation the sampler applied; the loss replays it
    top_k: int = 0
    actions: dict[str, Tensor] = field(default_factory=dict)  # controller actions per token, each [B, L]
    group_index: Tensor | None = None  # [B] which prompt of the step each row answers

    @property
    def batch_size(self) -> int:
        return int(self.completion_ids.shape[0])

    @property
    def input_ids(self) -> Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask.to(self.prompt_mask.dtype)], dim=1)

    @property
    def completion_lengths(self) -> Tensor:
        return self.completion_mask.sum(dim=1)

    def select(self, index: Tensor | slice) -> Rollouts:
        """Rows `index` of every per-row tensor (micro-batching, dynamic sampling)."""

        def pick(x: Tensor | None) -> Tensor | None:
            return None if x is None else x[index]

        return Rollouts(
            prompt_ids=self.prompt_ids[index],
            prompt_mask=self.prompt_mask[index],
            completion_ids=self.completion_ids[index],
            completion_mask=self.completion_mask[index],
            temperature=self.temperature[index],
            behaviour_logprobs=self.behaviour_logprobs[index],
            truncated=self.truncated[index],
            top_p=self.top_p,
            top_k=self.top_k,
            actions={k: v[index] for k, v in self.actions.items()},
            group_index=pick(self.group_index),
        )

    def to(self, device: torch.device | str) -> Rollouts:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.to(device)
        moved["actions"] = {k: v.to(device) for k, v in self.actions.items()}
        return Rollouts(**moved)


def concat_rollouts(parts: list[Rollouts], pad_id: int) -> Rollouts:
    """Stack rollout batches of possibly different prompt/completion widths (prompt left-, completion right-padded)."""
    p_width = max(r.prompt_ids.shape[1] for r in parts)
    l_width = max(r.completion_ids.shape[1] for r in parts)

    def left(x: Tensor, width: int, value: float) -> Tensor:
        return torch.nn.functional.pad(x, (width - x.shape[1], 0), value=value)

    def right(x: Tensor, width: int, value: float) -> Tensor:
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)

    def right_tau(x: Tensor, width: int) -> Tensor:
        extra = width - x.shape[1]
        return torch.cat([x, x[:, -1:].expand(-1, extra)], dim=1) if extra > 0 else x

    action_keys = parts[0].actions.keys()
    return Rollouts(
        prompt_ids=torch.cat([left(r.prompt_ids, p_width, pad_id) for r in parts]),
        prompt_mask=torch.cat([left(r.prompt_mask, p_width, 0) for r in parts]),
        completion_ids=torch.cat([right(r.completion_ids, l_width, pad_id) for r in parts]),
        completion_mask=torch.cat([right(r.completion_mask, l_width, 0) for r in parts]),
        temperature=torch.cat([right_tau(r.temperature, l_width) for r in parts]),
        behaviour_logprobs=torch.cat([right(r.behaviour_logprobs, l_width, 0.0) for r in parts]),
        truncated=torch.cat([r.truncated for r in parts]),
        top_p=parts[0].top_p,
        top_k=parts[0].top_k,
        actions={k: torch.cat([right(r.actions[k], l_width, 0.0) for r in parts]) for k in action_keys},
        group_index=None if parts[0].group_index is None else torch.cat([r.group_index for r in parts]),
    )
