"""Prompt text -> left-padded token ids, with the tokenizer's chat template when it has one and the task wants it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def has_chat_template(tokenizer: object) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


Prompt = str | list[dict[str, str]]  # text, or chat messages in TRL's conversational format


def render_prompt(
    tokenizer: object, prompt: Prompt, use_chat_template: bool = True, system_prompt: str | None = None
) -> tuple[str, bool]:
    """(text, add_special_tokens): the chat-templated conversation with a generation prompt when the tokenizer has a
    template and `use_chat_template`; else the raw prompt (and the tokenizer adds its special tokens, e.g. BOS).
    A prompt given as chat messages needs the template: there is no faithful way to flatten roles into raw text."""
    if isinstance(prompt, list):
        if not has_chat_template(tokenizer):
            raise ValueError(
                "the prompt is a list of chat messages but the tokenizer has no chat template; use a model with a "
                "chat template, or a plain-text prompt column (task.prompt_column)."
            )
        messages = list(prompt)
        if system_prompt and not (messages and messages[0].get("role") == "system"):
            messages.insert(0, {"role": "system", "content": system_prompt})
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False
    if use_chat_template and has_chat_template(tokenizer):
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": prompt})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text, False  # the template already holds any BOS
    return prompt, True


def encode_prompts(
    tokenizer: object,
    prompts: Sequence[Prompt],
    use_chat_template: bool = True,
    system_prompt: str | None = None,
    max_prompt_length: int | None = None,
    pad_id: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Left-padded (ids [B, P], mask [B, P]); prompts longer than `max_prompt_length` keep their last tokens."""
    pad = pad_id if pad_id is not None else tokenizer.pad_token_id
    if pad is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its eos token).")
    rows: list[list[int]] = []
    for prompt in prompts:
        text, special = render_prompt(tokenizer, prompt, use_chat_template, system_prompt)
        ids = list(tokenizer(text, add_special_tokens=special)["input_ids"])
        if max_prompt_length and len(ids) > max_prompt_length:
            ids = ids[-max_prompt_length:]
        rows.append(ids)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask
