"""Data parallel = one process with the whole batch: same rollouts, one optimizer step, same gradients and weights.

One fixed rollout batch (16 rows, uneven completion lengths, random advantages) is updated by the trainer's own update
step (`Trainer.update_policy`) in one process, and in two gloo processes holding 8 rows each (started by torch's elastic
launcher running this file as a script). Sampling noise is out: both see exactly the same rows.

grpo, dr_grpo and dapo normalise over rows, a fixed length or the global token count, so two processes match one
process that takes the whole batch as one micro-batch. bnpo (as TRL) normalises by each micro-batch's own tokens, so
two processes match one process with the same 8-row micro-batches, and not the single 16-row micro-batch.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kelvin.config import load_config
from kelvin.rl.rollouts import Rollouts
from kelvin.rl.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
LOSS_TYPES = ["grpo", "bnpo", "dr_grpo", "dapo"]
ROWS = 16
OVERRIDES = [
    "trainer.prompts_per_step=4",
    "sampling.num_generations=4",
    "sampling.max_completion_length=24",
    "task.eval_size=4",
    "trainer.tensorboard=false",
    "optim.learning_rate=1e-4",
]


def _config(loss_type: str, processes: int, micro_batch: int):
    return load_config(
        None,
        [
            *OVERRIDES,
            f"loss.loss_type={loss_type}",
            f"trainer.num_processes={processes}",
            f"trainer.micro_batch_size={micro_batch}",
        ],
    )


def _rows(record: Any, rows: slice) -> Any:
    """The same record type holding only `rows` (every per-row field is cut; counters are kept)."""
    changes = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, Rollouts):
            changes[f.name] = value.select(rows)
        elif isinstance(value, (torch.Tensor, list)) and len(value) == ROWS:
            changes[f.name] = value[rows]
        elif isinstance(value, dict):
            changes[f.name] = {k: v[rows] for k, v in value.items()}
    return dataclasses.replace(record, **changes)


def _one_update(config, record: Any, folder: Path) -> dict[str, Any]:
    """One optimizer step of the trainer's update on `record`; gradients as they reach the optimizer, new weights."""
    trainer = Trainer(config, folder, quiet=True)
    grads: dict[str, torch.Tensor] = {}
    step = trainer._optimizer_step

    def capture() -> float:
        grads.update({n: p.grad.detach().clone() for n, p in trainer.policy.named_parameters() if p.grad is not None})
        return step()

    trainer._optimizer_step = capture
    metrics, _ = trainer.update_policy(record)
    weights = {n: p.detach().clone() for n, p in trainer.policy.named_parameters()}
    return {"grads": grads, "weights": weights, "grad_norm": metrics["grad_norm"], "loss": metrics["loss"]}


def _worker(batch: str, out: str) -> None:
    rank = int(os.environ["RANK"])
    record = torch.load(batch, weights_only=False)
    half = ROWS // 2
    mine = _rows(record, slice(rank * half, (rank + 1) * half))
    results = {lt: _one_update(_config(lt, 2, half), mine, Path(out).parent / f"w{rank}") for lt in LOSS_TYPES}
    if rank == 0:
        torch.save(results, out)


@pytest.fixture(scope="module")
def batch(tmp_path_factory, warm_model_dir) -> tuple[Path, Any]:
    """A sampled rollout batch with random advantages (a reward signal on every row, so every row has a gradient)."""
    folder = tmp_path_factory.mktemp("dp")
    trainer = Trainer(_config("grpo", 1, ROWS), folder / "sampler", quiet=True)
    record = trainer.sample_and_reward()
    record.advantages = torch.randn(ROWS, generator=torch.Generator().manual_seed(1))
    tokens = record.rollouts.completion_mask.sum(dim=1)
    assert tokens[: ROWS // 2].sum() != tokens[ROWS // 2 :].sum()  # the halves differ: bnpo's case is not trivial
    torch.save(record, folder / "batch.pt")
    return folder, record


@pytest.fixture(scope="module")
def two_processes(batch) -> dict[str, Any]:
    folder, _ = batch
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        __file__,
        str(folder / "batch.pt"),
        str(folder / "two.pt"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(folder / "two.pt", weights_only=False)


def _assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["grads"].keys() == b["grads"].keys() and a["grads"]
    for name in a["grads"]:
        torch.testing.assert_close(a["grads"][name], b["grads"][name], rtol=1e-4, atol=1e-7, msg=name)
    # AdamW's first step moves each weight by ~lr * g / (|g| + 1e-8): float noise flips it where |g| is ~0, so the
    # weights are compared where the gradient is clearly non-zero (nearly all of them; checked).
    compared = total = 0
    for name in a["weights"]:
        clear = a["grads"][name].abs() > 1e-6 if name in a["grads"] else torch.ones_like(a["weights"][name]).bool()
        torch.testing.assert_close(a["weights"][name][clear], b["weights"][name][clear], rtol=0, atol=1e-6, msg=name)
        compared, total = compared + int(clear.sum()), total + clear.numel()
    assert compared > 0.9 * total
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_two_processes_match_one_process_with_the_whole_batch(loss_type, batch, two_processes, tmp_path):
    _, record = batch
    micro_batch = ROWS // 2 if loss_type == "bnpo" else ROWS
    one = _one_update(_config(loss_type, 1, micro_batch), record, tmp_path)
    _assert_same(one, two_processes[loss_type])
    assert all(g.abs().max() > 0 for g in one["grads"].values())  # every weight had a gradient: not a no-op
    if loss_type == "bnpo":  # one 16-row micro-batch normalises by all tokens at once: a different step
        whole = _one_update(_config(loss_type, 1, ROWS), record, tmp_path / "whole")
        assert any(not torch.allclose(whole["grads"][n], one["grads"][n], rtol=1e-3) for n in one["grads"])


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
