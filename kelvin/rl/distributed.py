"""Collectives over data-parallel processes that are no-ops in a single process.

Batch-level controllers (TAMPO, the entropy target) must see the whole rollout batch of every process, or their
states drift apart and the processes sample at different temperatures.
"""

from __future__ import annotations

import torch
from torch import Tensor

from kelvin.config import ConfigError, KelvinConfig, validate_layout


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() and world_size() > 1


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return 0


def all_reduce(value: Tensor, maximum: bool = False) -> Tensor:
    """Sum (or max) over processes; the value itself in a single process."""
    if not is_distributed():
        return value
    value = value.clone()
    torch.distributed.all_reduce(
        value, op=torch.distributed.ReduceOp.MAX if maximum else torch.distributed.ReduceOp.SUM
    )
    return value


def gather_rows(value: Tensor) -> Tensor:
    """Concatenate dim 0 over processes in rank order (every process holds the same number of rows)."""
    if not is_distributed():
        return value
    parts = [torch.empty_like(value) for _ in range(world_size())]
    torch.distributed.all_gather(parts, value.contiguous())
    return torch.cat(parts)


def all_reduce_gradients(module: torch.nn.Module) -> None:
    """Sum a module's gradients over processes (for losses already divided by a global count)."""
    if not is_distributed():
        return
    params = list(module.parameters())
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    torch.distributed.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p).clone()
        offset += p.numel()


def barrier() -> None:
    """Wait for every process (a no-op in a single process)."""
    if is_distributed():
        torch.distributed.barrier()


def check_launch(config: KelvinConfig, launched: int) -> None:
    """Refuse a run whose launched process count differs from `trainer.num_processes`, then check the layout."""
    wanted = config.trainer.num_processes
    if launched != wanted:
        raise ConfigError(
            f"This run was started as {launched} process(es) but trainer.num_processes={wanted}. Let Kelvin start "
            f"them: `kelvin train ... trainer.num_processes={max(wanted, launched)}` (note `accelerate launch --cpu` "
            f"starts only one process), or set trainer.num_processes={launched} to match your launcher."
        )
    validate_layout(config, launched)
