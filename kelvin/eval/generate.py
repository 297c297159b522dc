"""Generation for users: a saved model samples with its learned per-token temperatures, or at a fixed temperature.

`kelvin generate MODEL --prompt ...` calls `generate`. If MODEL holds a temperature head (saved by an IntroLLM run,
see controllers/introspective.py) and no temperature is given, every token's tau comes from the head; otherwise all
tokens are sampled at the given tau (1.0 when none is given; 0 means greedy). Per-token taus come back with the text
so that `render_generation` can colour them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kelvin.controllers import at_temperature, load_learned_controller
from kelvin.controllers.base import TemperatureController
from kelvin.eval.token_colors import render_token_temperatures
from kelvin.models.loading import eos_ids, load_pretrained
from kelvin.models.setup import resolve_device
from kelvin.rl.sampling import SamplingSettings, sample_in_chunks
from kelvin.tasks.prompts import encode_prompts


@dataclass
class Generation:
    prompts: list[str]
    texts: list[str]  # completions without special tokens
    tokens: list[list[str]]  # each completion token decoded on its own (EOS included when generated)
    taus: list[list[float]]  # the temperature that sampled each token
    learned: bool  # True when the taus came from the model's temperature head
    tau_range: tuple[float, float] | None  # the head's [tau_min, tau_max] when learned


def generate(
    model_folder: str | Path,
    prompts: list[str],
    max_new_tokens: int = 256,
    temperature: float | None = None,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int = 0,
    device: str | None = None,
    apply_chat_template: bool = False,  # wrap prompts in the tokenizer's chat template (when it has one)
    batch_size: int = 16,
) -> Generation:
    """Sample one completion per prompt from the model in `model_folder` (a local Hugging Face folder).

    temperature None: the learned head if the folder has one, else 1.0. A number: that fixed tau (0 = greedy).
    """
    if not prompts:
        raise ValueError("generate needs at least one prompt (--prompt TEXT).")
    if temperature is not None and temperature < 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy); omit it to use the learned head.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1.")
    model, tokenizer = load_pretrained(model_folder)
    target = resolve_device(device)
    model.to(target)

    controller: TemperatureController | None = None
    if temperature is None:
        controller = load_learned_controller(model_folder, seed=seed)
    learned = controller is not None
    tau_range = None
    if controller is not None:
        for module in controller.modules():
            module.to(target)
        initial = controller.initial_temperature or 1.0
        tau_range = controller.temperature_range()
    else:
        initial = 1.0 if temperature is None or temperature == 0 else float(temperature)
        controller = at_temperature(initial)

    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, use_chat_template=apply_chat_template)
    settings = SamplingSettings(
        max_new_tokens=max_new_tokens,
        eos_ids=eos_ids(model, tokenizer),
        pad_id=int(tokenizer.pad_token_id),
        top_p=top_p,
        top_k=top_k,
        greedy=temperature == 0,
    )
    generator = torch.Generator(device=target).manual_seed(seed)
    rollouts = sample_in_chunks(
        model,
        prompt_ids.to(target),
        prompt_mask.to(target),
        controller,
        settings,
        chunk=batch_size,
        generator=generator,
        initial_temperature=initial,
    )
    texts, tokens, taus = [], [], []
    for b in range(rollouts.batch_size):
        keep = rollouts.completion_mask[b].bool()
        ids = rollouts.completion_ids[b][keep].tolist()
        texts.append(tokenizer.decode(ids, skip_special_tokens=True))
        tokens.append([tokenizer.decode([i]) for i in ids])
        taus.append([float(t) for t in rollouts.temperature[b][keep].tolist()])
    return Generation(list(prompts), texts, tokens, taus, learned, tau_range)


def render_generation(generation: Generation, html_path: str | Path | None, png_path: str | Path | None) -> None:
    """Colour every generated token by its tau (prompt shown as each block's title)."""
    heading = "Learned per-token temperature" if generation.learned else "Fixed temperature"
    render_token_temperatures(
        generation.tokens,
        generation.taus,
        html_path,
        png_path,
        tau_range=generation.tau_range,
        titles=[f"prompt: {p}" for p in generation.prompts],
        heading=heading,
    )
