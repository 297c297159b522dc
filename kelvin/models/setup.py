"""Model set-up for training and evaluation: which device, which dtype, which folder; the policy with its LoRA
adapter and its frozen reference model. One place for what the trainer, `kelvin eval`, `kelvin compare` and
`kelvin generate` each used to decide on their own."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kelvin.config import KelvinConfig, ModelConfig
from kelvin.models.loading import load_pretrained, save_pretrained
from kelvin.models.warmup import WarmupRecipe, warmed_up_model_path


def resolve_device(name: str | None) -> torch.device:
    """'auto' (or None): cuda when available, else cpu; otherwise the named device."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a config/CLI dtype name ('float32' or 'bfloat16')."""
    return torch.bfloat16 if name == "bfloat16" else torch.float32


def resolve_model_path(config: KelvinConfig, quiet: bool = False) -> Path:
    """The local model folder to train: `model.path`, or the cached warmed-up tiny model."""
    if config.model.path:
        return Path(config.model.path)
    size = config.model.tiny.removeprefix("arithmetic-")
    recipe = WarmupRecipe(size=size, steps=config.model.warmup_steps, seed=config.model.warmup_seed)
    if not config.model.tiny.startswith("arithmetic-"):
        recipe = WarmupRecipe(size=size, steps=0, seed=config.model.warmup_seed)
    return warmed_up_model_path(recipe, quiet=quiet)


@dataclass
class TrainingModels:
    policy: torch.nn.Module  # on the CPU, LoRA-wrapped when model.lora_r > 0; the trainer places it
    tokenizer: Any
    reference: torch.nn.Module | None  # frozen, on `device`; None without KL or with LoRA (the base is the reference)


def load_training_models(config: KelvinConfig, device: torch.device, quiet: bool = False) -> TrainingModels:
    """The policy to train (LoRA, gradient checkpointing as configured) and the frozen reference model if needed."""
    m = config.model
    path = resolve_model_path(config, quiet=quiet)
    dtype = torch_dtype(m.dtype)
    policy, tokenizer = load_pretrained(path, dtype=dtype)
    reference = None
    if config.loss.beta > 0 and m.lora_r == 0:
        reference, _ = load_pretrained(path, dtype=dtype)
        reference.requires_grad_(False).eval().to(device)
    if m.lora_r > 0:
        policy = wrap_lora(policy, m)
    if m.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    return TrainingModels(policy, tokenizer, reference)


def save_trained_model(policy: torch.nn.Module, tokenizer: Any, folder: Path, lora: bool) -> None:
    """The trained policy as a plain model folder for `kelvin eval/generate`; with LoRA also the adapter."""
    model = policy
    if lora:
        # merge a copy: merge_and_unload rewrites the live peft model in place
        policy.save_pretrained(folder / "adapter")
        model = copy.deepcopy(policy).merge_and_unload()  # type: ignore[operator]
    save_pretrained(model, tokenizer, folder)


def wrap_lora(model: torch.nn.Module, m: ModelConfig) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=m.lora_r,
        lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout,
        target_modules=m.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)
