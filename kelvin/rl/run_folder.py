"""The run folder's safety: one writer at a time, the old run replaced only when the new one is ready, and JSONL logs
that survive a torn last line (a kill or a full disk mid-write).

    with RunLock(output):                  # refuses a folder another live process is writing
        trainer = Trainer(config, output)  # every start-up check (model, data, rewards) runs here...
        clear_run_folder(output)           # ...so --overwrite deletes the old run only after they all passed
        trainer.train()
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOCK_FILE = ".kelvin.lock"
RUN_LOGS = ("metrics.jsonl", "completions.jsonl")


class RunFolderError(RuntimeError):
    """The output folder cannot be used as asked. The message names the folder and the fix."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # A zombie (killed, not yet reaped) holds no lock.
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


class RunLock:
    """An exclusive lock on a run folder: `<folder>/.kelvin.lock` holds the holder's pid.

    Created with O_EXCL, so two processes cannot both take it. A lock whose pid is dead (a killed run) is stale: it
    is taken over, with a message. Released (the file removed) on exit from the `with` block.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.took_over_from: int | None = None
        self._held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        if self.folder.exists() and not self.folder.is_dir():
            raise RunFolderError(f"--output-dir {self.folder} is a file, not a folder; choose another path.")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RunFolderError(
                f"--output-dir {self.folder} cannot be created ({err.strerror}); choose a writable location."
            ) from None
        for _ in range(3):  # create, or find a stale lock, remove it and create again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and _alive(holder):
                    raise RunFolderError(
                        f"--output-dir {self.folder} is in use by another kelvin process (pid {holder}, lock file "
                        f"{self.path}); wait for it to finish, or choose another --output-dir."
                    ) from None
                print(
                    f"kelvin: taking over the stale lock {self.path} (pid {holder} is no longer running)",
                    file=sys.stderr,
                )
                self.took_over_from = holder
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            except OSError as err:
                raise RunFolderError(
                    f"--output-dir {self.folder} is not writable ({err.strerror}); fix its permissions or choose "
                    "another --output-dir."
                ) from None
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            self._held = True
            return
        raise RunFolderError(f"could not take the lock {self.path}; remove it by hand if no kelvin run is using it.")

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None  # empty or garbage: a writer died between create and write

    def release(self) -> None:
        if self._held:
            self._held = False
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def clear_run_folder(folder: Path) -> None:
    """Delete everything in `folder` except its lock (for --overwrite, once the new run is ready to write)."""
    for entry in Path(folder).iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def has_run_content(folder: Path) -> bool:
    """True when the folder holds anything besides a lock."""
    folder = Path(folder)
    return folder.is_dir() and any(entry.name != LOCK_FILE for entry in folder.iterdir())


# --------------------------------------------------------------------------------------------------------------------
# JSONL logs
# --------------------------------------------------------------------------------------------------------------------


def _complete_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | None]]:
    """(line, row) for each non-blank line; row is None for a line that does not parse (a torn write)."""
    with path.open("rb") as handle:
        for raw in handle:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                yield line, None
                continue
            yield line, row if isinstance(row, dict) else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete row of a metrics/completions log; a torn line (a killed write, a full disk) is skipped."""
    rows = []
    skipped = 0
    for _, row in _complete_rows(Path(path)):
        if row is None:
            skipped += 1
        else:
            rows.append(row)
    if skipped:
        logger.warning("%s: skipped %d torn or unreadable line(s)", path, skipped)
    return rows


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep only the complete rows with step <= last_step (a killed run may have logged steps after its last
    checkpoint, and its last line may be torn)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [line for line, row in _complete_rows(path) if row is not None and row.get("step", 0) <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)  # atomic: a kill here leaves the old file or the new one, never half of one


def restart_without_checkpoint(folder: Path) -> bool:
    """`--resume` found no complete checkpoint: drop what a killed start wrote (its logs and events) so the run
    starts cleanly instead of appending a second copy of its first rows. True if anything was removed."""
    folder = Path(folder)
    removed = False
    for name in (*RUN_LOGS, "tensorboard", "summary.json"):
        target = folder / name
        if target.is_dir():
            shutil.rmtree(target)
            removed = True
        elif target.exists():
            target.unlink()
            removed = True
    return removed
