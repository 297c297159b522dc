"""Sampling a FSDP2-sharded model: gather the full parameters once per rollout, or sample through the sharded module.

    python bench/fsdp_sampling.py [--size 10m] [--processes 2] [--rows 16] [--new-tokens 32] [--repeats 2]

Starts `--processes` gloo workers (torch's elastic launcher); each shards a randomly initialised tiny model with
kelvin.rl.sharding and samples `--rows` completions of exactly `--new-tokens` tokens (EOS disabled) both ways. EOS
must be off for the second way: a sharded forward is a collective, so processes that stop decoding at different
steps would wait on each other forever; that alone rules it out for training, and this measures what it would cost.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    import torch

    from kelvin.controllers.fixed import FixedController
    from kelvin.models.loading import build_char_tokenizer, build_tiny_model
    from kelvin.rl.sampling import SamplingSettings, sample_in_chunks
    from kelvin.rl.sharding import full_parameters, shard

    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    model = shard(build_tiny_model(args.size, vocab_size=len(build_char_tokenizer()), seed=0)).eval()
    ids = torch.randint(3, 80, (args.rows, 12), generator=torch.Generator().manual_seed(rank))
    mask = torch.ones_like(ids)
    settings = SamplingSettings(max_new_tokens=args.new_tokens, eos_ids=[], pad_id=0)

    def sample() -> None:
        sample_in_chunks(model, ids, mask, FixedController(1.0), settings, 0, generator=torch.Generator())

    def gathered() -> None:
        with full_parameters(model):
            sample()

    times: dict[str, list[float]] = {"gather once per rollout": [], "sharded forward per token": []}
    with torch.no_grad():
        for _ in range(args.repeats + 1):  # the first round warms up
            for name, fn in (("gather once per rollout", gathered), ("sharded forward per token", sample)):
                torch.distributed.barrier()
                start = time.perf_counter()
                fn()
                torch.distributed.barrier()
                times[name].append(time.perf_counter() - start)
    if rank == 0:
        world = torch.distributed.get_world_size()
        load = os.getloadavg()[0]
        print(f"{args.size} model sharded over {world} gloo processes x 1 thread, {args.rows} rows x "
              f"{args.new_tokens} tokens per process, median of {args.repeats}, load {load:.1f}")  # fmt: skip
        base = statistics.median(times["gather once per rollout"][1:])
        for name, values in times.items():
            median = statistics.median(values[1:])
            print(f"  {name:26} {median:6.2f} s  x{median / base:.2f}")
    torch.distributed.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="10m")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(args.processes), __file__, *sys.argv[1:], "--worker"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    sys.exit(subprocess.run(command, env=env).returncode)


if __name__ == "__main__":
    main()
