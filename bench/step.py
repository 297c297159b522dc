"""One GRPO step on the ~10M tiny model, broken into sampling, reward, log-prob recomputation and update.

    python bench/step.py [--size 10m] [--prompts 16] [--generations 8] [--new-tokens 48] [--repeats 2] [--json]

The phases are the trainer's own functions called one by one on the same batch: `sample_in_chunks`, the
`Rewarder`, `policy_pass` without gradient (what the old-policy/reference recomputation costs), and the full
update (`Trainer.update_policy`: forward + backward + optimizer step, with the old log-probs taken from the same pass).
Shares are printed side by side so the bottleneck is visible; the model is randomly initialised (completions run to
full length, which makes the timing deterministic).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from kelvin.config import load_config
from kelvin.controllers.base import ScoringRequest
from kelvin.rl.policy_pass import policy_pass, trim
from kelvin.rl.sampling import sample_in_chunks
from kelvin.rl.trainer import StepRecord, Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="10m")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--micro-batch", type=int, default=64)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the update")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    config = load_config(
        None,
        [
            f"model.tiny={args.size}",
            f"trainer.prompts_per_step={args.prompts}",
            f"sampling.num_generations={args.generations}",
            f"sampling.max_completion_length={args.new_tokens}",
            f"trainer.micro_batch_size={args.micro_batch}",
            "trainer.tensorboard=false",
            "trainer.log_completions=0",
            f"model.autocast_bf16={str(args.bf16).lower()}",
        ],
    )
    trainer = Trainer(config, tempfile.mkdtemp(prefix="kelvin-bench-"), quiet=True)
    trainer.sampling.eos_ids = []  # every completion runs to full length, as the docstring promises
    phases: dict[str, list[float]] = {"sample": [], "reward": [], "logprob_recompute": [], "update": []}
    for repeat in range(args.repeats + 1):
        trainer.controller.begin_step(trainer.step)
        examples, ids, mask = trainer.take_prompts()
        t0 = time.perf_counter()
        rollouts = sample_in_chunks(
            trainer.policy, ids, mask, trainer.controller, trainer.sampling, 0, generator=trainer.generator
        )
        t1 = time.perf_counter()
        texts = trainer.tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
        trainer.rewarder(texts, examples)
        t2 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, rollouts.batch_size, args.micro_batch):
                policy_pass(trainer.policy, trim(rollouts.select(slice(i, i + args.micro_batch))), ScoringRequest())
        t3 = time.perf_counter()
        n = rollouts.batch_size
        step_record = StepRecord(
            rollouts=rollouts,
            examples=examples,
            texts=texts,
            rewards=torch.zeros(n),
            accuracy=torch.zeros(n),
            advantages=torch.randn(n),
            std_is_zero=torch.zeros(n).bool(),
        )
        trainer.update_policy(step_record)
        t4 = time.perf_counter()
        if repeat == 0:
            continue  # warm-up
        for key, value in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            phases[key].append(value)
    median = {k: statistics.median(v) for k, v in phases.items()}
    total = sum(median.values()) - median["logprob_recompute"]  # the update already contains the old-policy pass
    tokens = rollouts.batch_size * args.new_tokens
    result = {
        "model": args.size,
        "batch": rollouts.batch_size,
        "new_tokens": args.new_tokens,
        "bf16": args.bf16,
        **{f"{k}_s": v for k, v in median.items()},
        "step_s": total,
        "sample_tokens_per_s": tokens / median["sample"],
        "update_share": median["update"] / total,
        "sample_share": median["sample"] / total,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"one GRPO step, {args.size} model, {rollouts.batch_size} completions x {args.new_tokens} tokens, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    for k, v in median.items():
        print(f"  {k:18s} {v:7.3f} s")
    print(
        f"  step (sample + reward + update) {total:.2f} s; sampling {result['sample_share']:.0%}, "
        f"update {result['update_share']:.0%}"
    )
    print(f"  a no-grad log-prob pass costs {median['logprob_recompute'] / median['update']:.2f} of the update")


if __name__ == "__main__":
    main()
