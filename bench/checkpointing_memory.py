"""Peak memory and time of the policy update with and without gradient checkpointing (10M model, CPU).

    python bench/checkpointing_memory.py [--size 10m] [--prompts 8] [--generations 8] [--new-tokens 64] [--json]

Each setting runs in its own process (the allocator keeps freed memory, so one process cannot measure both). A
process samples one batch, runs one update to allocate the optimizer state, then resets the kernel's peak-RSS mark
(/proc/self/clear_refs) and measures a second update on the same batch: peak RSS above the RSS before it is the
update's own working memory (activations, gradients, logits), and its wall time shows the recomputation's price.
On a GPU, bench/gpu_check.py measures the same with torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(args: argparse.Namespace, checkpointing: bool) -> dict[str, float]:
    import torch

    from kelvin.config import load_config
    from kelvin.rl.trainer import Trainer

    torch.set_num_threads(args.threads)
    rows = args.prompts * args.generations
    config = load_config(
        None,
        [
            f"model.tiny={args.size}",
            f"trainer.prompts_per_step={args.prompts}",
            f"sampling.num_generations={args.generations}",
            f"sampling.max_completion_length={args.new_tokens}",
            f"trainer.micro_batch_size={rows}",
            "trainer.tensorboard=false",
            "trainer.log_completions=0",
            f"model.gradient_checkpointing={str(checkpointing).lower()}",
        ],
    )
    trainer = Trainer(config, tempfile.mkdtemp(prefix="kelvin-bench-"), quiet=True)
    trainer.sampling.eos_ids = []  # every completion runs to full length: the same token count in both settings
    record = trainer.sample_and_reward()
    trainer.update_policy(record)  # allocates the optimizer state
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    trainer.update_policy(record)
    seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM")
    return {
        "gradient_checkpointing": checkpointing,
        "update_peak_mib": (peak - before) / 1024,
        "update_s": seconds,
        "rows": rows,
        "tokens_per_row": int(record.rollouts.input_ids.shape[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="10m")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker", choices=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args, args.worker == "on")))
        return
    results = []
    for setting in ("off", "on"):
        command = [sys.executable, __file__, *sys.argv[1:], "--worker", setting]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    off, on = results
    if args.json:
        print(json.dumps(results))
        return
    print(
        f"{args.size} model, {off['rows']} rows x {off['tokens_per_row']} tokens, one micro-batch, "
        f"{args.threads} thread(s), load average {os.getloadavg()[0]:.1f}"
    )
    for r in results:
        print(
            f"  gradient_checkpointing={r['gradient_checkpointing']!s:5}  update peak {r['update_peak_mib']:7.1f} "
            f"MiB above its start   update {r['update_s']:.2f} s"
        )
    print(
        f"  memory ratio on/off {on['update_peak_mib'] / off['update_peak_mib']:.2f}, "
        f"time ratio on/off {on['update_s'] / off['update_s']:.2f}"
    )


if __name__ == "__main__":
    main()
