"""Where the real data lives, and a JSONL reader that skips (and counts) bad rows instead of failing."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]  # the folder that holds kelvin/


DATA_ENV = "KELVIN_DATA"


def _main_worktree(root: Path) -> Path | None:
    """The main checkout when `root` is a linked git worktree (its .git is a file 'gitdir: <main>/.git/worktrees/x')."""
    marker = root / ".git"
    if not marker.is_file():
        return None
    text = marker.read_text(encoding="utf-8", errors="replace").strip()
    if not text.startswith("gitdir:"):
        return None
    gitdir = Path(text.split(":", 1)[1].strip())
    return gitdir.parents[2] if gitdir.parent.name == "worktrees" else None


def default_data_root() -> Path:
    """The real-data folder: $KELVIN_DATA if set, else `../shared/data` relative to the repository root
    (data/README.md); a linked git worktree falls back to its main checkout's `../shared/data`."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    candidate = (REPOSITORY_ROOT / ".." / "shared" / "data").resolve()
    main = _main_worktree(REPOSITORY_ROOT)
    if not candidate.is_dir() and main is not None and (main / ".." / "shared" / "data").is_dir():
        return (main / ".." / "shared" / "data").resolve()
    return candidate


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    """(line number, row) for every non-blank line; row is None when the line is not a JSON object (or not UTF-8:
    one bad line is a skipped row, not a fatal UnicodeDecodeError for the whole file)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                yield number, None
                continue
            yield number, row if isinstance(row, dict) else None


def require_file(path: Path, what: str, setting: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}: {path} does not exist. Set {setting} to the file or its folder "
            f"(default data root: {default_data_root()}, see data/README.md)."
        )
    return path
