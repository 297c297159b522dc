"""Where the real data lives (the copy shipped in the package unless told otherwise), and a JSONL reader that skips
(and counts) bad rows instead of failing."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "data"  # kelvin/data: shipped with the package (README there)

DATA_ENV = "KELVIN_DATA"


def default_data_root() -> Path:
    """The real-data folder: $KELVIN_DATA if set, else the copy shipped inside the package (kelvin/data: GSM8K and
    the five math benchmarks, with their licences), so a clone or a pip install has the data with nothing beside it."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return PACKAGE_DATA


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
            f"(default data root: {default_data_root()}, see kelvin/data/README.md)."
        )
    return path
