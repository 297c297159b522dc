"""Atomic checkpoints and exact resume, with one state file per process.

A checkpoint is a folder `checkpoints/step-000012/` holding the policy weights (safetensors), the optimizer state,
the shared state (data position, optimizer step count, config, number of processes) and `rank-000.pt`,
`rank-001.pt`, ...: each process's own random generators, sampling generator and controller state. Every process
draws its own random numbers, so resuming all of them from rank 0's streams (what a single state file does) would make
the processes sample identical rows: not an exact resume.

It is written to a temporary sibling folder (every process writes its file there, then rank 0 the rest) and renamed
into place only when complete, with a `COMPLETE` marker written last inside it: a checkpoint interrupted mid-write is
never picked up by `latest_checkpoint`, and its `.tmp-step-*` folder is removed by the next writer (the run folder's
lock makes that writer the only one). A checkpoint written by a different number of processes is refused: the
per-process streams cannot be split or merged exactly.

Loading never runs code from the folder: the optimizer and state files are read with `torch.load(weights_only=True)`
(numpy arrays, e.g. numpy's RNG state, are stored as tensors for that), so a pickle planted in a run folder is refused
instead of executed. A checkpoint whose weights are not all finite is never written. A newest checkpoint that cannot be
read is named and skipped for the previous complete one.
"""

from __future__ import annotations

import errno
import logging
import random
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_file, save_model

from kelvin.rl.distributed import barrier
from kelvin.rl.sharding import is_sharded, load_full_state

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
_NDARRAY = "__ndarray__"
_LOW_SPACE_BYTES = 16 * 2**20  # below this, a failed write is reported as a full disk


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read. The message names the file and the fix."""


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
        _require_finite(model, step)
        root.mkdir(parents=True, exist_ok=True)
        remove_orphans(root)  # left by a run killed mid-write
        tmp.mkdir()
    barrier()
    with _reported_write(root, tmp if rank == 0 else None, step):
        write_state(rank_state or {}, tmp / rank_file(rank))
    barrier()
    if rank == 0:
        with _reported_write(root, tmp, step):
            if isinstance(model, dict):  # weights gathered from a sharded model
                save_file(_unshared(model), str(tmp / "model.safetensors"))
            elif model is not None:
                save_model(model, str(tmp / "model.safetensors"))
            if optimizer is not None:
                write_state(optimizer if isinstance(optimizer, dict) else optimizer.state_dict(), tmp / "optimizer.pt")
            write_state({**state, "step": step, "num_processes": num_processes}, tmp / "state.pt")
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
    return int(read_state(path).get("num_processes", 1))


def load_checkpoint(
    path: Path,
    model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    rank: int = 0,
    num_processes: int = 1,
) -> dict[str, Any]:
    """Restore weights and optimizer in place; return the shared state updated with this process's own state.

    Raises CheckpointMismatch, before touching anything, when the checkpoint was written by another number of
    processes, and CheckpointError naming the file that cannot be read safely."""
    file = path / "state.pt"
    try:
        state = read_file(file)
        if not isinstance(state, dict) or "step" not in state:
            raise CheckpointError(f"{file} is not a Kelvin checkpoint state (no 'step').")
        saved = int(state.get("num_processes", 1))
        if saved != num_processes:
            raise CheckpointMismatch(
                f"Checkpoint {path} was written by {saved} process(es) and this run has {num_processes}. Each "
                "process resumes its own random and sampling streams, which cannot be split or merged exactly, so "
                f"the run would not continue as it started. Resume with trainer.num_processes={saved}, or start a "
                "new run (--overwrite, or another --output-dir)."
            )
        file = path / "model.safetensors"
        if model is not None and is_sharded(model):
            optimizer_state = read_file(path / "optimizer.pt") if optimizer is not None else None
            load_full_state(model, optimizer, file, optimizer_state)
        else:
            if model is not None:
                load_model(model, str(file))
            if optimizer is not None:
                file = path / "optimizer.pt"
                optimizer.load_state_dict(read_file(file))
        own = path / rank_file(rank)
        if own.is_file():  # older checkpoints kept rank 0's streams in state.pt
            file = own
            state.update(read_file(own))
    except (CheckpointError, CheckpointMismatch):
        raise
    except Exception as err:  # unpickling refused, truncated file, wrong shapes: all mean "not this checkpoint"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{file} cannot be loaded safely ({type(err).__name__}: {reason[:300]})") from err
    return state


def read_state(path: Path) -> dict[str, Any]:
    """The saved state of a checkpoint (step, config, ...) without touching a model."""
    return read_file(path / "state.pt")


def write_state(value: Any, file: Path) -> None:
    """torch.save, with numpy arrays stored as tensors so that `read_file` can load it with weights_only=True."""
    torch.save(_encode(value), file)


def read_file(file: Path) -> Any:
    """torch.load(weights_only=True): tensors and plain Python only, never code from the file."""
    return _decode(torch.load(file, weights_only=True))


def load_latest_checkpoint(
    root: Path,
    model: torch.nn.Module | None,
    optimizer: torch.optim.Optimizer | None,
    rank: int = 0,
    num_processes: int = 1,
) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest complete checkpoint that reads cleanly; a broken newer one is named and skipped (with a
    message). None when there is no complete checkpoint; CheckpointError when none of them can be read;
    CheckpointMismatch (not skipped) when it was written by another number of processes."""
    if rank == 0:
        remove_orphans(root)
    problems: list[str] = []
    for path in reversed(complete_checkpoints(root)):
        try:
            state = load_checkpoint(path, model, optimizer, rank=rank, num_processes=num_processes)
        except CheckpointError as err:
            problems.append(str(err))
            print(f"kelvin: {err}; trying the previous checkpoint", file=sys.stderr)
            continue
        if problems:
            print(f"kelvin: resuming from the older checkpoint {path}", file=sys.stderr)
        return path, state
    if problems:
        raise CheckpointError(
            "no complete checkpoint can be loaded: "
            + "; ".join(problems)
            + ". Restart without --resume (--overwrite) or restore the files."
        )
    return None


def remove_orphans(root: Path) -> None:
    """Delete `.tmp-step-*` folders left by a write that was killed (only the folder's lock holder writes)."""
    if root.is_dir():
        for orphan in root.glob(".tmp-step-*"):
            shutil.rmtree(orphan, ignore_errors=True)


@contextmanager
def _reported_write(root: Path, tmp: Path | None, step: int) -> Iterator[None]:
    """A failed write (OSError, torch's RuntimeError, safetensors' own SafetensorError) removes `tmp` and says what
    happened: a full disk as 'no space left on device at <path>', anything else as a CheckpointError."""
    try:
        yield
    except Exception as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        said = str(err).lower()
        full = (
            getattr(err, "errno", None) == errno.ENOSPC
            or "no space left" in said
            or "os error 28" in said
            or _free_bytes(root) < _LOW_SPACE_BYTES
        )
        if full:
            raise OSError(
                errno.ENOSPC,
                f"no space left on device at {root} while writing checkpoint step {step} ({err}); free some space "
                "(or lower trainer.keep_last) and rerun with --resume",
            ) from err
        raise CheckpointError(f"writing checkpoint step {step} under {root} failed: {err}") from err


def _require_finite(model: torch.nn.Module | dict[str, torch.Tensor] | None, step: int) -> None:
    weights = model if isinstance(model, dict) else model.state_dict() if model is not None else {}
    for name, tensor in weights.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"refusing to write checkpoint step {step}: weight {name} holds NaN or infinity (training diverged); "
                "lower optim.learning_rate or set optim.max_grad_norm, and resume from the previous checkpoint"
            )


def _free_bytes(path: Path) -> int:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def _encode(value: Any) -> Any:
    """numpy arrays -> tagged tensors, so that the state loads with weights_only=True."""
    if isinstance(value, np.ndarray):
        return {_NDARRAY: torch.from_numpy(np.ascontiguousarray(value))}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_encode(v) for v in value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_NDARRAY}:
            return value[_NDARRAY].numpy()
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_decode(v) for v in value)
    return value
