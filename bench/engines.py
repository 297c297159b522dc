"""Kelvin's sampler vs vLLM, side by side in one run: sampling throughput and one whole GRPO step with each engine.

    .venv-vllm/bin/python bench/engines.py [--sizes 1m,10m] [--prompts 16] [--generations 8] [--new-tokens 48]
                                           [--tau 1.0] [--threads 1] [--repeats 3] [--json]

(`make test-vllm` builds .venv-vllm.) For each model size, two trainers are built from one config that differs only
in `sampling.engine`. Sampling: both engines sample the same prompt batch at the same temperature, every completion
running to full length (no stop token; the tiny models are randomly initialised), so tokens/s compare equal work.
Step: `Trainer.train_step` (sample, reward, old log-probs, update, weight push to vLLM) on the next batch. The
medians of `--repeats` timed calls follow one untimed warm-up call. The run prints its threads, batch and the
machine's load average before and after, because on a shared 2-core machine those decide the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

# Threads are fixed before torch (and vLLM, which reads OMP_NUM_THREADS) is imported.
os.environ["OMP_NUM_THREADS"] = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch

from kelvin.config import load_config
from kelvin.rl.trainer import Trainer


def build(size: str, engine: str, args: argparse.Namespace) -> Trainer:
    config = load_config(
        None,
        [
            f"model.tiny={size}",
            f"sampling.engine={engine}",
            f"trainer.prompts_per_step={args.prompts}",
            f"sampling.num_generations={args.generations}",
            f"sampling.max_completion_length={args.new_tokens}",
            f"sampling.temperature={args.tau}",
            f"trainer.micro_batch_size={args.prompts * args.generations}",
            f"trainer.torch_threads={args.threads}",
            "trainer.tensorboard=false",
            "trainer.log_completions=0",
            "trainer.eval_every=0",
        ],
    )
    trainer = Trainer(config, tempfile.mkdtemp(prefix=f"kelvin-bench-{engine}-"), quiet=True)
    trainer.sampling.eos_ids.clear()  # no stop token: every completion runs to full length in both engines
    return trainer


def timed(fn, repeats: int) -> tuple[float, object]:
    fn()  # warm-up: caches, first-call compilation, the first weight push
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def measure(size: str, engine: str, args: argparse.Namespace) -> dict[str, float | str]:
    trainer = build(size, engine, args)
    _, ids, mask = trainer.take_prompts()
    trainer.controller.begin_step(0)

    def sample_once():
        return trainer.engine.generate(ids, mask, trainer.controller, 0, trainer.generator, args.tau)

    sample_s, rollouts = timed(sample_once, args.repeats)
    tokens = int(rollouts.completion_mask.sum())  # type: ignore[attr-defined]
    step_s, metrics = timed(trainer.train_step, args.repeats)
    return {
        "size": size,
        "engine": engine,
        "parameters": sum(p.numel() for p in trainer.policy.parameters()),
        "tokens_per_batch": tokens,
        "sample_s": sample_s,
        "tokens_per_s": tokens / sample_s,
        "step_s": step_s,
        "step_sample_and_reward_s": float(metrics["time/sample_and_reward"]),  # type: ignore[index]
        "step_update_s": float(metrics["time/update"]),  # type: ignore[index]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1m,10m")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()[0]
    rows = [measure(size, engine, args) for size in args.sizes.split(",") for engine in ("kelvin", "vllm")]
    load_after = os.getloadavg()[0]
    setup = {
        "threads": args.threads,
        "batch": f"{args.prompts} prompts x {args.generations} = {args.prompts * args.generations} rows",
        "new_tokens": args.new_tokens,
        "tau": args.tau,
        "load_average_before_after": [round(load_before, 2), round(load_after, 2)],
        "cpus": os.cpu_count(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    if args.json:
        print(json.dumps({"setup": setup, "rows": rows}, indent=1))
        return
    print(" ".join(f"{k}={v}" for k, v in setup.items()))
    print(
        f"{'size':>5} {'engine':>7} {'params':>10} {'tokens/s':>10} {'sample s':>9} {'step s':>8} "
        f"{'(sample+reward':>15} {'update)':>8}"
    )
    for r in rows:
        print(
            f"{r['size']:>5} {r['engine']:>7} {r['parameters']:>10,} {r['tokens_per_s']:>10.0f} {r['sample_s']:>9.3f} "
            f"{r['step_s']:>8.3f} {r['step_sample_and_reward_s']:>15.3f} {r['step_update_s']:>8.3f}"
        )
    for size in args.sizes.split(","):
        kelvin, vllm = (next(r for r in rows if r["size"] == size and r["engine"] == e) for e in ("kelvin", "vllm"))
        print(
            f"{size}: vLLM / Kelvin sampling throughput {vllm['tokens_per_s'] / kelvin['tokens_per_s']:.2f}x, "
            f"step time {vllm['step_s'] / kelvin['step_s']:.2f}x"
        )


if __name__ == "__main__":
    main()
