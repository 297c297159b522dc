"""The GPU check: sampler throughput, one fixed-T and one TAMPO step at 1.5B scale, bf16 sampler consistency.

    bench/gpu_check.sh                 # one NVIDIA GPU, real sizes, under 8 minutes
    bench/gpu_check.sh --cpu --tiny    # the same code end to end on a CPU in about a minute (sizes shrunk)

Models are built locally from architecture configs with random weights (nothing from the hub) and saved with
Kelvin's character tokenizer; completions run to full length (EOS disabled), so token counts are exact.

1. Sampler: Kelvin's KV-cache sampler (per-token temperature hook, behaviour log-probs recorded) vs
   `model.generate` on a 135M-architecture Llama (SmolLM2-135M's shape), batch 256, bf16: tokens/s of each.
2. One training step with the fixed controller and one with TAMPO on a Qwen2-1.5B-architecture model, 64 prompts x 8
   completions x 512 tokens, bf16 weights: seconds, peak memory, TAMPO / fixed ratio, and the step's
   `sampler_logprob_gap/max` (how far the update's recomputed log-probs are from the sampler's, in bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PretrainedConfig, Qwen2Config

from kelvin.config import load_config
from kelvin.controllers.fixed import FixedController
from kelvin.models.loading import build_char_tokenizer, save_pretrained
from kelvin.rl.sampling import SamplingSettings, sample_in_chunks
from kelvin.rl.trainer import Trainer


@dataclass
class Sizes:
    sampler_batch: int
    sampler_tokens: int
    prompts: int
    generations: int
    completion_tokens: int
    micro_batch: int


FULL = Sizes(sampler_batch=256, sampler_tokens=128, prompts=64, generations=8, completion_tokens=512, micro_batch=8)
TINY = Sizes(sampler_batch=8, sampler_tokens=16, prompts=4, generations=4, completion_tokens=16, micro_batch=8)


def architecture(name: str, tiny: bool) -> PretrainedConfig:
    """SmolLM2-135M's and Qwen2-1.5B's shapes (from their published config.json), or a tiny model of each family."""
    if name == "llama-135m":
        if tiny:
            return LlamaConfig(
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                vocab_size=512,
                tie_word_embeddings=True,
            )
        return LlamaConfig(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            max_position_embeddings=8192,
            rope_theta=100000.0,
            tie_word_embeddings=True,
        )
    if tiny:
        return Qwen2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=1024,
            tie_word_embeddings=True,
        )
    return Qwen2Config(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                       num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768,
                       rope_theta=1000000.0, tie_word_embeddings=True)  # fmt: skip


def build(name: str, tiny: bool, dtype: torch.dtype, folder: Path) -> Path:
    """A random-weight model of `name`'s architecture saved with the character tokenizer (ids past its vocabulary
    decode to nothing, so rewards are simply 0)."""
    tokenizer = build_char_tokenizer()
    config = architecture(name, tiny)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = 1, 2, 0
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    save_pretrained(model, tokenizer, folder)
    return folder


class PeakMemory:
    """Peak memory of a block: CUDA's allocator peak, or on CPU the kernel's peak-RSS mark (reset first)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            Path("/proc/self/clear_refs").write_text("5")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.gib = torch.cuda.max_memory_allocated() / 2**30
        else:
            hwm = [line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM")]
            self.gib = int(hwm[0].split()[1]) / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def sampler_vs_generate(folder: Path, sizes: Sizes, device: torch.device, dtype: torch.dtype) -> dict[str, float]:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True).to(device).eval()
    batch, new = sizes.sampler_batch, sizes.sampler_tokens
    ids = torch.randint(3, 80, (batch, 16), device=device, generator=torch.Generator(device).manual_seed(0))
    mask = torch.ones_like(ids)
    settings = SamplingSettings(max_new_tokens=new, eos_ids=[], pad_id=0)
    generator = torch.Generator(device=device).manual_seed(0)

    def kelvin() -> None:
        sample_in_chunks(model, ids, mask, FixedController(1.0), settings, 0, generator=generator)

    def hf() -> None:
        model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                       max_new_tokens=new, min_new_tokens=new, pad_token_id=0, eos_token_id=None)  # fmt: skip

    out = {}
    with torch.no_grad():
        for name, fn in (("kelvin", kelvin), ("generate", hf)):
            fn()  # warm-up: kernels, allocator
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            out[f"{name}_tokens_per_s"] = batch * new / (time.perf_counter() - start)
    out["kelvin_over_generate"] = out["kelvin_tokens_per_s"] / out["generate_tokens_per_s"]
    return out


def training_steps(folder: Path, sizes: Sizes, device: torch.device) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for controller in ("fixed", "tampo"):
        config = load_config(
            None,
            [
                f"model.path={folder}",
                "model.dtype=bfloat16",
                f"trainer.device={device.type}",
                f"trainer.prompts_per_step={sizes.prompts}",
                f"sampling.num_generations={sizes.generations}",
                f"sampling.max_completion_length={sizes.completion_tokens}",
                f"trainer.micro_batch_size={sizes.micro_batch}",
                f"sampling.batch_size={sizes.prompts * sizes.generations}",
                "task.eval_size=4",
                "trainer.tensorboard=false",
                "trainer.log_completions=0",
                f"controller.name={controller}",
            ],
        )
        trainer = Trainer(config, tempfile.mkdtemp(prefix=f"kelvin-gpu-check-{controller}-"), quiet=True)
        trainer.sampling.eos_ids = []  # full-length completions: the token count is exact
        if not out:
            trainer.train_step()  # warm-up step (kernels, allocator) before the first measured one
        with PeakMemory(device) as peak:
            start = time.perf_counter()
            metrics = trainer.train_step()
            sync(device)
            seconds = time.perf_counter() - start
        out[controller] = {
            "step_s": seconds,
            "sample_s": metrics["time/sample_and_reward"],
            "update_s": metrics["time/update"],
            "peak_gib": peak.gib,
            "sampler_logprob_gap_max": metrics["sampler_logprob_gap/max"],
            "temperature": metrics["temperature/mean"],
        }
        del trainer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (no GPU needed)")
    parser.add_argument("--tiny", action="store_true", help="tiny models of the same families and small batches")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device visible; run with --cpu --tiny to check the script end to end here")
    device = torch.device("cpu" if args.cpu else "cuda")
    sizes = TINY if args.tiny else FULL
    total = time.perf_counter()
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"kelvin gpu check on {where}, torch {torch.__version__}, {'tiny' if args.tiny else 'full'} sizes")
    root = Path(tempfile.mkdtemp(prefix="kelvin-gpu-check-"))

    small = build("llama-135m", args.tiny, torch.bfloat16, root / "llama")
    sampler = sampler_vs_generate(small, sizes, device, torch.bfloat16)
    print(f"[1] sampler, llama-135m architecture, batch {sizes.sampler_batch} x {sizes.sampler_tokens} new tokens, "
          f"bf16: Kelvin {sampler['kelvin_tokens_per_s']:,.0f} tok/s, generate {sampler['generate_tokens_per_s']:,.0f}"
          f" tok/s, ratio {sampler['kelvin_over_generate']:.2f}")  # fmt: skip

    big = build("qwen2-1.5b", args.tiny, torch.bfloat16, root / "qwen2")
    steps = training_steps(big, sizes, device)
    for name, s in steps.items():
        print(f"[2] {name:5} step, qwen2-1.5b architecture, {sizes.prompts} x {sizes.generations} x "
              f"{sizes.completion_tokens} tokens, bf16: {s['step_s']:.2f} s (sample {s['sample_s']:.2f} s, update "
              f"{s['update_s']:.2f} s), peak {s['peak_gib']:.2f} GiB, T {s['temperature']:.2f}, "
              f"sampler_logprob_gap/max {s['sampler_logprob_gap_max']:.3g}")  # fmt: skip
    ratio = steps["tampo"]["step_s"] / steps["fixed"]["step_s"]
    memory = steps["tampo"]["peak_gib"] / steps["fixed"]["peak_gib"]
    print(f"[2] TAMPO / fixed: time x{ratio:.2f}, peak memory x{memory:.2f}")
    print(f"total {time.perf_counter() - total:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"sampler": sampler, "steps": steps, "device": where}, indent=2))


if __name__ == "__main__":
    main()
