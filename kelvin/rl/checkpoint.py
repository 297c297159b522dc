"""Atomic checkpoints and exact resume, with one state file per process.

A checkpoint is a folder `checkpoints/step-000012/` holding the policy weights (safetensors), the optimizer state,
the shared state (data position, optimizer step count, config, number of processes) and `rank-000.pt`,
`rank-001.pt`, ...: each process's own random generators, sampling generator and controller state. Every process
draws its own random numbers, so resuming all of them from rank 0's streams (what a single state file does) would make
the processes sample identical rows: not an exact resume.

It is written to a temporary sibling folder (every process writes its file there, then rank 0 the rest) and renamed
into place only when complete, with a `COMPLETE` marker written last inside it: a checkpoint interrupted mid-write is
never picked up by `latest_checkpoint`. A checkpoint written by a different number of processes is refused: the
per-process streams cannot be split or merged exactly.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_file, save_model

from kelvin.rl.distributed import barrier
from kelvin.rl.sharding import is_sharded, load_full_state

MARKER = "COMPLETE"


class CheckpointMismatch(ValueError):
    """A checkpoint cannot be resumed by this run (e.g. it was written by another number of processes)."""


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module | dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer | dict[str, Any] | None,
    state: dict[str, Any],
    keep_last: int,
    rank_state: dict[str, Any] | None = None,
    rank: int = 0,
    num_processes: int = 1,
) -> Path:
    """Write checkpoint `step` atomically under `root`, then delete all but the newest `keep_last`.

    With several processes every process calls this (it holds barriers): each writes its own `rank_state`; rank 0
    writes `model`, `optimizer` and the shared `state` (the other processes may pass None for those). A sharded
    model's weights and optimizer state come gathered, as dicts (kelvin.rl.sharding).
    """
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"  # one name every process agrees on without communicating
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed mid-write
        tmp.mkdir()
    barrier()
    torch.save(rank_state or {}, tmp / rank_file(rank))
    barrier()
    if rank == 0:
        if isinstance(model, dict):  # weights gathered from a sharded model
            save_file(_unshared(model), str(tmp / "model.safetensors"))
        elif model is not None:
            save_model(model, str(tmp / "model.safetensors"))
        if optimizer is not None:
            torch.save(optimizer if isinstance(optimizer, dict) else optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({**state, "step": step, "num_processes": num_processes}, tmp / "state.pt")
        (tmp / MARKER).write_text(str(step))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in complete_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    barrier()  # nobody reads or prunes checkpoints while rank 0 is still renaming
    return final


def _unshared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (a tied head): keep the first name of each."""
    seen: set[int] = set()
    kept = {}
    for name, tensor in weights.items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            kept[name] = tensor.contiguous()
    return kept


def rank_file(rank: int) -> str:
    return f"rank-{rank:03d}.pt"


def complete_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None


def checkpoint_processes(path: Path) -> int:
    """How many processes wrote a checkpoint (1 for checkpoints from before per-process state files)."""
    return int(torch.load(path / "state.pt", weights_only=False).get("num_processes", 1))


def load_checkpoint(
    path: Path,
    model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    rank: int = 0,
    num_processes: int = 1,
) -> dict[str, Any]:
    """Restore weights and optimizer in place; return the shared state updated with this process's own state.

    Raises CheckpointMismatch, before touching anything, when the checkpoint was written by another number of
    processes.
    """
    state = torch.load(path / "state.pt", weights_only=False)
    saved = int(state.get("num_processes", 1))
    if saved != num_processes:
        raise CheckpointMismatch(
            f"Checkpoint {path} was written by {saved} process(es) and this run has {num_processes}. Each process "
            "resumes its own random and sampling streams, which cannot be split or merged exactly, so the run "
            f"would not continue as it started. Resume with trainer.num_processes={saved}, or start a new run "
            "(--overwrite, or another --output-dir)."
        )
    if model is not None and is_sharded(model):
        load_full_state(model, optimizer, path / "model.safetensors", path / "optimizer.pt")
    else:
        if model is not None:
            load_model(model, str(path / "model.safetensors"))
        if optimizer is not None:
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    own = path / rank_file(rank)
    if own.is_file():  # older checkpoints kept rank 0's streams in state.pt
        state.update(torch.load(own, weights_only=False))
    return state
