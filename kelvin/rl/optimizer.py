"""The policy's optimizer: AdamW, the learning-rate schedule, and one clipped step."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from kelvin.config import OptimConfig


def lr_at(o: OptimConfig, optimizer_step: int, total_optimizer_steps: int) -> float:
    """Learning rate of an optimizer step: linear warm-up, then constant or cosine decay to min_lr_ratio.

    Steps are 0-based and `total_optimizer_steps` counts the updates the run actually takes, so the last one
    (index total - 1) runs at exactly learning_rate x min_lr_ratio: progress = (i - warmup) / (total - 1 - warmup).
    (transformers' cosine schedule divides by total - warmup and stops one step short of its minimum.)
    """
    if o.warmup_steps and optimizer_step < o.warmup_steps:
        return o.learning_rate * (optimizer_step + 1) / o.warmup_steps
    if o.lr_scheduler == "constant":
        return o.learning_rate
    span = max(total_optimizer_steps - 1 - o.warmup_steps, 1)
    progress = min(max(optimizer_step - o.warmup_steps, 0) / span, 1.0)
    return o.learning_rate * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_optimizer(model: torch.nn.Module, o: OptimConfig, total_optimizer_steps: int) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, starting at the first step's learning rate (so the lr a step used can
    always be read back from `param_groups`)."""
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=lr_at(o, 0, total_optimizer_steps),
        betas=(o.adam_beta1, o.adam_beta2),
        weight_decay=o.weight_decay,
    )


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    o: OptimConfig,
    index: int,
    total: int,
    allow: Callable[[float], bool] | None = None,
) -> float:
    """Optimizer step number `index` (0-based) of `total`: set its lr, clip the gradient norm, step, zero the grads.
    Returns the gradient norm before clipping. `allow(norm)` False skips the step (kelvin.rl.guards: NaN/inf)."""
    lr = lr_at(o, index, total)
    for group in optimizer.param_groups:
        group["lr"] = lr
    params = [p for p in model.parameters() if p.requires_grad]
    norm = torch.nn.utils.clip_grad_norm_(params, o.max_grad_norm if o.max_grad_norm > 0 else float("inf"))
    if allow is None or allow(float(norm)):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(norm)
