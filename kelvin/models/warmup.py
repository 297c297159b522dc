"""The embedded default model: a tiny character-level Llama warmed up by supervised training on arithmetic.

Training runs for a fixed number of steps (not a time budget) from a fixed seed on one CPU thread, so the checkpoint
is the same on every machine: a float reduction split over several threads sums in an order that depends on the thread
count, and 300 steps amplify that last-bit difference into a different model (held-out accuracy 0.44 on one machine,
0.49 on another before this was fixed). One thread gives bitwise-identical weights for the same torch build and CPU
instruction set; `warmup.json` records a SHA-256 of the weights so two machines can check they share the model.
It is cached under `$KELVIN_CACHE_DIR` (default `~/.cache/kelvin`) by a hash of everything that shapes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kelvin.models.loading import build_char_tokenizer, build_tiny_model, save_pretrained
from kelvin.tasks.arithmetic import make_problem, working

WARMUP_VERSION = 2  # bump when the recipe below changes, so stale caches are not reused (2: one thread)


@dataclass(frozen=True)
class WarmupRecipe:
    size: str = "1m"
    steps: int = 300
    seed: int = 0
    min_digits: int = 1
    max_digits: int = 4
    batch_size: int = 128
    learning_rate: float = 2e-3
    lr_warmup_steps: int = 50

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": WARMUP_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("KELVIN_CACHE_DIR", Path.home() / ".cache" / "kelvin"))


def _batch(tokenizer, rng: random.Random, recipe: WarmupRecipe) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and labels (-100 on prompt and padding) for one supervised batch, right-padded."""
    rows, labels = [], []
    for _ in range(recipe.batch_size):
        a, b = make_problem(rng, recipe.min_digits, recipe.max_digits)
        prompt_ids = tokenizer(f"{a}+{b}=").input_ids
        target_ids = [*tokenizer(working(a, b), add_special_tokens=False).input_ids, tokenizer.eos_token_id]
        rows.append(prompt_ids + target_ids)
        labels.append([-100] * len(prompt_ids) + target_ids)
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows])
    lab = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
    return ids, lab


def train_tiny_model(recipe: WarmupRecipe, log_every: int = 50, quiet: bool = False):
    """Supervised warm-up; returns (model, tokenizer). Deterministic given the recipe."""
    tokenizer = build_char_tokenizer()
    model = build_tiny_model(recipe.size, vocab_size=len(tokenizer), seed=recipe.seed)
    rng = random.Random(f"warmup:{recipe.seed}")
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, betas=(0.9, 0.98), weight_decay=0.01)
    model.train()
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = recipe.learning_rate * min(1.0, (step + 1) / recipe.lr_warmup_steps)
        ids, labels = _batch(tokenizer, rng, recipe)
        loss = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long(), labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if not quiet and (step + 1) % log_every == 0:
            print(f"  warm-up step {step + 1}/{recipe.steps}  loss {loss.item():.3f}", flush=True)
    model.eval()
    return model, tokenizer


def train_reproducibly(recipe: WarmupRecipe, quiet: bool = False):
    """`train_tiny_model` on one thread from the recipe's seed, leaving the caller's threads and RNG as they were."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # reproducible reductions: see the module docstring
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            return train_tiny_model(recipe, quiet=quiet)
    finally:
        torch.set_num_threads(threads)


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter's name and float32 bytes, in name order: equal digests = bitwise-equal weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def warmed_up_model_path(recipe: WarmupRecipe, quiet: bool = False) -> Path:
    """The cached warmed-up model folder, training it first if it is not cached yet (written atomically)."""
    target = cache_dir() / "tiny" / f"{recipe.size}-{recipe.key()}"
    if (target / "config.json").is_file():
        return target
    if not quiet:
        print(f"Warming up the tiny {recipe.size} model ({recipe.steps} supervised steps, cached in {target}) ...")
    model, tokenizer = train_reproducibly(recipe, quiet=quiet)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    save_pretrained(model, tokenizer, tmp)
    info = {**asdict(recipe), "version": WARMUP_VERSION, "weights_sha256": weights_digest(model)}
    (tmp / "warmup.json").write_text(json.dumps(info, indent=2))
    try:
        tmp.rename(target)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target
