"""Step time of 1 vs 2 data-parallel processes on the 10M model, read from each run's own metrics.jsonl.

    python bench/data_parallel.py [--size 10m] [--steps 3] [--prompts 8] [--generations 8] [--new-tokens 32]

Three real `kelvin train` runs on the same total batch: 1 process with 1 thread, 1 process with 2 threads (the
fair single-process baseline on a 2-core machine), and 2 processes with 1 thread each (`trainer.num_processes=2`).
The first step is left out (allocation, first-call overheads); the median `time/step` of the others is reported,
with `num_processes` read back from the runs. CPU-only boxes shared with other work give noisy numbers: the load
average is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: argparse.Namespace, processes: int, threads: int, folder: Path) -> dict[str, float]:
    rows = args.prompts * args.generations // processes
    command = [
        sys.executable,
        "-m",
        "kelvin.cli",
        "train",
        f"model.tiny={args.size}",
        f"trainer.steps={args.steps}",
        f"trainer.prompts_per_step={args.prompts}",
        f"sampling.num_generations={args.generations}",
        f"sampling.max_completion_length={args.new_tokens}",
        f"trainer.micro_batch_size={rows}",
        f"trainer.num_processes={processes}",
        f"trainer.torch_threads={threads}",
        "task.eval_size=8",
        "trainer.tensorboard=false",
        "trainer.log_completions=0",
        "--output-dir",
        str(folder),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True, text=True)
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if m["step"] >= 2 and "time/step" in m]
    return {
        "num_processes": json.loads((folder / "summary.json").read_text())["num_processes"],
        "threads_per_process": threads,
        "step_s": statistics.median(m["time/step"] for m in steps),
        "sample_s": statistics.median(m["time/sample_and_reward"] for m in steps),
        "update_s": statistics.median(m["time/update"] for m in steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="10m", help="model.tiny: '10m' (random init, no warm-up) or '1m'")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="kelvin-dp-"))
    results = [run(args, p, t, root / f"p{p}-t{t}") for p, t in ((1, 1), (1, 2), (2, 1))]
    if args.json:
        print(json.dumps(results))
        return
    print(
        f"{args.size} model, {args.prompts} prompts x {args.generations} completions x {args.new_tokens} tokens per "
        f"step, median of steps 2..{args.steps}; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after, {os.cpu_count()} CPUs"
    )
    base = results[0]["step_s"]
    for r in results:
        print(
            f"  {r['num_processes']} process(es) x {r['threads_per_process']} thread(s): step {r['step_s']:6.2f} s "
            f"(sample+reward {r['sample_s']:.2f} s, update {r['update_s']:.2f} s)  speed-up x{base / r['step_s']:.2f}"
        )


if __name__ == "__main__":
    main()
