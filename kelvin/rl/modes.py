"""The policy's mode: train for the update, eval for sampling and evaluation (the trainer switches it).

transformers only recomputes activations under gradient checkpointing in train mode, and dropout (LoRA's included)
only acts in train mode; so the update must run in train mode or `model.gradient_checkpointing` and
`model.lora_dropout` silently do nothing. Sampling and evaluation stay in eval mode (no dropout, KV cache allowed).
"""

from __future__ import annotations

import torch


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """transformers' activation checkpointing of every decoder layer, non-reentrant: it gives gradients even when the
    inputs need none (LoRA freezes the embeddings; the reentrant variant would return no gradient for the adapters)."""
    enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5; the old name is deprecated
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
