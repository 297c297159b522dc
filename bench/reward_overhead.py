"""Overhead of the Rewarder's worker process on the arithmetic verifier, measured side by side in one run.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python bench/reward_overhead.py

Compares, for a batch of 512 arithmetic completions (half right, half wrong): the verifier called in-process in a
loop, and a Rewarder call (one pipe round trip to the forked worker; worker already started). Prints medians.
"""

from __future__ import annotations

import statistics
import time

from kelvin.rewards import Rewarder
from kelvin.tasks.arithmetic import arithmetic_task, working


def main(batch: int = 512, repeats: int = 30) -> None:
    task = arithmetic_task(seed=0, min_digits=1, max_digits=4, eval_size=batch)
    examples = task.test
    completions = []
    for i, example in enumerate(examples):
        a, b = example.columns["a"], example.columns["b"]
        completions.append(working(a, b) if i % 2 == 0 else working(a, b + 1))

    def in_process() -> None:
        [task.verify(c, e) for c, e in zip(completions, examples)]

    rewarder = Rewarder(task, timeout_s=5.0)
    first = time.perf_counter()
    result = rewarder(completions, examples)
    first = time.perf_counter() - first
    assert float(result.accuracy.mean()) == 0.5, result.accuracy.mean()

    def timed(fn) -> float:
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        return statistics.median(samples)

    plain = timed(in_process)
    worker = timed(lambda: rewarder(completions, examples))
    rewarder.close()
    print(f"batch {batch} arithmetic completions, median of {repeats}:")
    print(f"  in-process verifier loop : {plain * 1e3:8.3f} ms")
    print(
        f"  Rewarder (worker process): {worker * 1e3:8.3f} ms  (overhead {(worker - plain) * 1e3:.3f} ms, "
        f"ratio {worker / plain:.1f}x)"
    )
    print(f"  first call incl. fork    : {first * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
