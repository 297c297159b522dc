"""The embedded model's warm-up gives bitwise-identical weights whatever the caller's thread count."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = """
import torch
from kelvin.models.warmup import WarmupRecipe, train_reproducibly, weights_digest
torch.set_num_threads({threads})
model, _ = train_reproducibly(WarmupRecipe(steps=40, batch_size=64), quiet=True)
assert torch.get_num_threads() == {threads}
print(weights_digest(model))
"""


def _digest(threads: int) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(threads=threads)], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1]


def test_warmup_weights_do_not_depend_on_thread_count():
    one, two = _digest(1), _digest(2)
    assert len(one) == 64
    assert one == two
