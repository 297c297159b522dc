"""Kelvin's sampler vs `model.generate`: same model, batch, length and temperature, side by side in one run.

    python bench/sampler.py [--size 10m] [--batch 512] [--new-tokens 128] [--repeats 1] [--json]

Both decode exactly `--new-tokens` tokens (no early stop) at the same fixed temperature; the timings alternate
between the two so background load affects both alike. Reported: tokens per second and the ratio
(Kelvin / generate). Goal: >= 1.5x. Kelvin also records tau and the behaviour log-prob of every token, which
`generate` does not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import GenerationConfig

from kelvin.controllers.fixed import FixedController
from kelvin.models.loading import build_char_tokenizer, build_tiny_model
from kelvin.rl.sampling import SamplingSettings, sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="10m")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tokenizer = build_char_tokenizer()
    model = build_tiny_model(args.size, len(tokenizer), seed=0, max_positions=args.prompt_tokens + args.new_tokens + 8)
    model.eval()
    torch.manual_seed(0)
    prompt = torch.randint(3, len(tokenizer), (args.batch, args.prompt_tokens))
    mask = torch.ones_like(prompt)
    n_tokens = args.batch * args.new_tokens

    def run_generate() -> float:
        config = GenerationConfig(
            do_sample=True,
            temperature=args.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=args.new_tokens,
            min_new_tokens=args.new_tokens,
            pad_token_id=0,
            eos_token_id=2,
        )
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=prompt, attention_mask=mask, generation_config=config)
        assert out.shape[1] == args.prompt_tokens + args.new_tokens
        return time.perf_counter() - start

    def run_kelvin(cache: str) -> float:
        settings = SamplingSettings(max_new_tokens=args.new_tokens, eos_ids=[], pad_id=0, cache=cache)
        start = time.perf_counter()
        r = sample(
            model, prompt, mask, FixedController(args.temperature), settings, generator=torch.Generator().manual_seed(0)
        )
        assert r.completion_ids.shape[1] == args.new_tokens
        return time.perf_counter() - start

    run_generate(), run_kelvin("static")  # warm-up
    times: dict[str, list[float]] = {"generate": [], "kelvin_static": [], "kelvin_dynamic": []}
    for _ in range(args.repeats):
        times["generate"].append(run_generate())
        times["kelvin_static"].append(run_kelvin("static"))
        times["kelvin_dynamic"].append(run_kelvin("dynamic"))
    median = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "model": args.size,
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(),
        **{f"{k}_tokens_per_s": n_tokens / v for k, v in median.items()},
        "sampler_speedup_vs_generate": median["generate"] / median["kelvin_static"],
        "dynamic_cache_speedup_vs_generate": median["generate"] / median["kelvin_dynamic"],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"model {args.size}, batch {args.batch}, {args.new_tokens} new tokens, T={args.temperature}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    for k, v in median.items():
        print(f"  {k:16s} {v:7.2f} s   {n_tokens / v:9.0f} tokens/s")
    print(f"  ratio kelvin(static cache) / generate: {result['sampler_speedup_vs_generate']:.2f}x  (goal >= 1.5x)")
    print(f"  ratio kelvin(dynamic cache) / generate: {result['dynamic_cache_speedup_vs_generate']:.2f}x")


if __name__ == "__main__":
    main()
