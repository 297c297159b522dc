"""Atomic checkpoints and exact resume.

A checkpoint is a folder `checkpoints/step-000012/` holding the policy weights (safetensors), the optimizer state,
the controller state (its head weights too) and every random generator, plus the data position. It is written to a
temporary sibling folder and renamed into place only when complete, with a `COMPLETE` marker written last inside it:
a checkpoint interrupted mid-write is never picked up by `latest_checkpoint`, and its `.tmp-step-*` folder is removed
by the next writer (the run folder's lock makes that writer the only one).

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
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model, save_model

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
_NDARRAY = "__ndarray__"
_LOW_SPACE_BYTES = 16 * 2**20  # below this, a failed write is reported as a full disk


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or read. The message names the file and the fix."""


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    root: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write checkpoint `step` atomically under `root`, then delete all but the newest `keep_last`."""
    _require_finite(model, step)
    root.mkdir(parents=True, exist_ok=True)
    remove_orphans(root)
    final = root / f"step-{step:06d}"
    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-step-{step:06d}-", dir=root))
        save_model(model, str(tmp / "model.safetensors"))
        write_state(optimizer.state_dict(), tmp / "optimizer.pt")
        write_state({**state, "step": step}, tmp / "state.pt")
        (tmp / MARKER).write_text(str(step))
    except Exception as err:  # OSError, torch's RuntimeError, safetensors' own SafetensorError: all a failed write
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
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    for old in complete_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def complete_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(root: Path) -> Path | None:
    done = complete_checkpoints(root)
    return done[-1] if done else None


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore weights and optimizer in place; return the saved state (step, RNG, controller, data position).

    Raises CheckpointError naming the file that cannot be read safely."""
    file = path / "model.safetensors"
    try:
        load_model(model, str(file))
        file = path / "optimizer.pt"
        optimizer.load_state_dict(read_file(file))
        file = path / "state.pt"
        state = read_file(file)
    except Exception as err:  # unpickling refused, truncated file, wrong shapes: all mean "not this checkpoint"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{file} cannot be loaded safely ({type(err).__name__}: {reason[:300]})") from err
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{path / 'state.pt'} is not a Kelvin checkpoint state (no 'step').")
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
    root: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[Path, dict[str, Any]] | None:
    """Load the newest complete checkpoint that reads cleanly; a broken newer one is named and skipped (with a
    message). None when there is no complete checkpoint; CheckpointError when none of them can be read."""
    remove_orphans(root)
    problems: list[str] = []
    for path in reversed(complete_checkpoints(root)):
        try:
            state = load_checkpoint(path, model, optimizer)
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


def _require_finite(model: torch.nn.Module, step: int) -> None:
    for name, tensor in model.state_dict().items():
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
