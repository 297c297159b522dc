"""Sharded training with FSDP2 (`trainer.sharding: fsdp2`), for models that do not fit one device.

Every decoder layer and the root model are wrapped by torch's `fully_shard`: each process keeps 1/N of every
parameter, gradient and optimizer state, and a layer's full weights exist only while it runs. Kelvin applies
`fully_shard` itself instead of going through accelerate's FSDP plugin, because accelerate only enables FSDP on GPU
process groups: with `Accelerator(cpu=True)` it silently falls back to DDP, so the CPU (gloo) test could not cover the
code that runs on GPUs. torch's FSDP2 runs the same on gloo and nccl.

Sampling gathers the full parameters once per rollout (`full_parameters`), instead of sampling through the sharded
module: a sharded forward all-gathers every layer for every decoded token, and it is a collective, so processes whose
completions end at different lengths (a different number of decoding steps) would wait on each other forever.
Checkpoints hold the gathered full model and optimizer state, so they look like unsharded ones; the final model is a
plain `save_pretrained` folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise ValueError(
            f"trainer.sharding=fsdp2 shards the decoder layers at `model.model.layers`, which "
            f"{type(model).__name__} does not have; use trainer.sharding=none for this model."
        )
    return layers


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 over the default process group: one unit per decoder layer, the root holds embeddings and head."""
    if not torch.distributed.is_initialized():  # one process (accelerate starts no group): a group of one
        backend = "nccl" if next(model.parameters()).is_cuda else "gloo"
        store = torch.distributed.HashStore()
        torch.distributed.init_process_group(backend, store=store, rank=0, world_size=1)
    for layer in decoder_layers(model):
        fully_shard(layer)
    fully_shard(model)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


@contextmanager
def full_parameters(model: torch.nn.Module) -> Iterator[None]:
    """Within the block the model holds its full parameters and runs with no communication (sampling, evaluation);
    they are sharded again after. A no-op for an unsharded model."""
    if not is_sharded(model):
        yield
        return
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def full_model_state(model: torch.nn.Module) -> dict[str, Tensor]:
    """The whole model's weights on the CPU of rank 0 (empty elsewhere). A collective: every process calls it."""
    return get_model_state_dict(model, options=FULL)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimizer state on rank 0 (a collective, as `full_model_state`)."""
    return get_optimizer_state_dict(model, optimizer, options=FULL)


def load_full_state(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    weights: Path,
    optimizer_state: dict[str, Any] | None,
) -> None:
    """Every process reads the full checkpoint (weights file, optimizer state already read) and keeps its shard."""
    from safetensors.torch import load_file

    set_model_state_dict(model, load_file(str(weights)), options=StateDictOptions(full_state_dict=True))
    if optimizer is not None and optimizer_state is not None:
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


def plain_copy(model: torch.nn.Module) -> torch.nn.Module | None:
    """An unsharded CPU copy of a sharded model on rank 0 (None elsewhere), for `save_pretrained`. A collective."""
    from transformers import AutoModelForCausalLM

    state = full_model_state(model)
    if not state:
        return None
    copy = AutoModelForCausalLM.from_config(model.config, dtype=next(iter(state.values())).dtype)
    missing, unexpected = copy.load_state_dict(state, strict=False)
    tied = set(getattr(copy, "_tied_weights_keys", None) or ())  # a tied head may be listed once
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"gathered weights do not fit the model: missing {missing}, unexpected {unexpected}")
    copy.tie_weights()
    return copy
