"""Overhead of the Rewarder's worker process, measured side by side in one run.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/reward_overhead.py

For a GRPO batch of 512 completions (64 prompts x 8 samples, the same Example object repeated in its group as in
the trainer; half the samples right, half wrong), compares the task's verifier called in-process in a loop with a
Rewarder call (one pipe round trip to the forked worker; worker already started). Two verifiers: the embedded
arithmetic task's exact match (pure string matching, where the overhead is most visible) and GSM8K's math-verify
check (real data needed; skipped without it). Prints medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from kelvin.rewards.functions import Rewarder
from kelvin.tasks.arithmetic import arithmetic_task, working
from kelvin.tasks.base import Example, Task


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def compare(label: str, task: Task, completions: list[str], examples: list[Example], repeats: int) -> None:
    rewarder = Rewarder(task, timeout_s=5.0)
    start = time.perf_counter()
    result = rewarder(completions, examples)
    first = time.perf_counter() - start
    assert float(result.accuracy.mean()) == 0.5, result.accuracy.mean()
    plain = _median_seconds(lambda: [task.verify(c, e) for c, e in zip(completions, examples)], repeats)
    worker = _median_seconds(lambda: rewarder(completions, examples), repeats)
    rewarder.close()
    print(f"{label}: {len(completions)} completions, median of {repeats}")
    print(f"  in-process verifier loop : {plain * 1e3:9.3f} ms")
    print(
        f"  Rewarder (worker process): {worker * 1e3:9.3f} ms  (overhead {(worker - plain) * 1e3:.3f} ms, "
        f"ratio {worker / plain:.2f}x)"
    )
    print(f"  first call incl. fork    : {first * 1e3:9.3f} ms")


def main(prompts: int = 64, group: int = 8) -> None:
    task = arithmetic_task(seed=0, min_digits=1, max_digits=4, eval_size=prompts)
    examples = [e for e in task.test for _ in range(group)]
    completions = []
    for i, example in enumerate(examples):
        a, b = example.columns["a"], example.columns["b"]
        completions.append(working(a, b) if i % 2 == 0 else working(a, b + 1))
    compare("arithmetic (exact match)", task, completions, examples, repeats=30)

    try:
        from kelvin.tasks.gsm8k import gsm8k_task

        gsm8k = gsm8k_task(eval_size=prompts)
    except FileNotFoundError as err:
        print(f"gsm8k: skipped ({err})")
        return
    examples = [e for e in gsm8k.test for _ in range(group)]
    completions = [
        f"Step by step... so the total is \\boxed{{{e.answer if i % 2 == 0 else int(float(e.answer)) + 1}}}."
        for i, e in enumerate(examples)
    ]
    compare("gsm8k (math-verify)", gsm8k, completions, examples, repeats=3)


if __name__ == "__main__":
    main()
