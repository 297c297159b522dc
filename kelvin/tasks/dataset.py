"""Any dataset as a Task: a file (or `save_to_disk` folder) read with the `datasets` library, a prompt column (text or
TRL-style chat messages), an answer column and a verifier, as TRL, verl (`data.prompt_key`) and OpenRLHF
(`--input_key/--label_key`) take them.

Gold answers are read from the answer column as: a number (27.0 -> "27"); a text whose last \\boxed{} is the
answer (MATH-style solutions); a text ending '#### answer' (GSM8K-style); otherwise the stripped text itself.
A row is skipped and counted, with its reason, when it lacks the prompt column, its prompt is empty or neither text
nor chat messages, or (with a verifier) its answer is missing or unreadable. A file with no usable row fails before
training with the path, the columns found and the fix.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kelvin.rewards.math_answers import extract_boxed, extract_final_answer, normalize_answer, preload_math_verify
from kelvin.tasks.base import Example, Task
from kelvin.tasks.math_common import MathVerifier, ShuffledStream

logger = logging.getLogger(__name__)

_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class DatasetSpec:
    """Which columns hold what, and how answers are checked (the task.* fields of the same names)."""

    prompt_column: str = "prompt"
    answer_column: str | None = "answer"
    verifier: str = "math"  # math | exact | none
    instruction: str | None = None


@dataclass
class RowsLoad:
    path: Path
    columns: list[str]
    examples: list[Example]
    rows: int = 0
    reasons: list[str] = field(default_factory=list)  # "row N: why", one per skipped row

    @property
    def skipped(self) -> int:
        return len(self.reasons)


def read_table(path: str | Path) -> Any:
    """The rows of a .jsonl/.json/.csv/.parquet file, or of a `save_to_disk` folder, as a `datasets.Dataset`."""
    import datasets

    file = Path(path)
    if file.is_dir():
        loaded = datasets.load_from_disk(str(file))
        if isinstance(loaded, datasets.DatasetDict):
            split = "train" if "train" in loaded else next(iter(loaded))
            loaded = loaded[split]
        return loaded
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist; point task.path (or task.test_path) at a data file.")
    builder = _BUILDERS.get(file.suffix.lower())
    if builder is None:
        raise ValueError(
            f"{file}: unknown data format {file.suffix!r}; use .jsonl, .json, .csv or .parquet, or a folder "
            "written by datasets' save_to_disk."
        )
    try:
        return datasets.load_dataset(builder, data_files=str(file), split="train")
    except Exception as err:  # the datasets/pyarrow message alone does not say which setting to fix
        raise ValueError(f"{file}: the datasets library cannot read it as {builder} ({err}).") from err


def gold_answer(value: Any) -> str | None:
    """The gold answer of one cell (module docstring), or None when it cannot be read."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return normalize_answer(str(value)) if value == value else None  # NaN: a blank CSV cell
    if not isinstance(value, str) or not value.strip():
        return None
    boxed = extract_boxed(value)
    if boxed is not None:
        return boxed.strip() or None
    if "####" in value:
        return value.rsplit("####", 1)[1].strip().replace(",", "") or None
    return value.strip()


def _prompt(value: Any, instruction: str | None) -> str | list[dict[str, str]] | None:
    """Text or chat messages with `instruction` appended (to the last user message), or None if unusable."""
    suffix = f"\n\n{instruction.strip()}" if instruction else ""
    if isinstance(value, str):
        return value.strip() + suffix if value.strip() else None
    if isinstance(value, list) and value:
        if not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
        ):
            return None
        messages = [{"role": m["role"], "content": m["content"]} for m in value]
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        if not users or not messages[users[-1]]["content"].strip():
            return None
        messages[users[-1]]["content"] = messages[users[-1]]["content"].strip() + suffix
        return messages
    return None


def read_rows(path: str | Path, spec: DatasetSpec, split: str) -> RowsLoad:
    """Every usable row of a file as an Example; the other rows are counted with their reasons."""
    table = read_table(path)
    columns = list(table.column_names)
    load = RowsLoad(Path(path), columns, [], rows=len(table))
    needs_answer = spec.verifier != "none"
    for index, row in enumerate(table):
        prompt = _prompt(row.get(spec.prompt_column), spec.instruction)
        raw_answer = row.get(spec.answer_column) if spec.answer_column else None
        answer = gold_answer(raw_answer)
        if spec.prompt_column not in row:
            load.reasons.append(f"row {index}: no column {spec.prompt_column!r}")
        elif prompt is None:
            load.reasons.append(f"row {index}: prompt is empty or neither text nor chat messages")
        elif needs_answer and answer is None:
            load.reasons.append(f"row {index}: answer {raw_answer!r:.60} is missing or unreadable")
        else:
            extra = {k: v for k, v in row.items() if k != spec.prompt_column}
            load.examples.append(Example(f"dataset-{split}-{index}", prompt, answer or "", extra))
    return load


def _no_rows_error(load: RowsLoad, spec: DatasetSpec, setting: str) -> ValueError:
    shown = "; ".join(load.reasons[:3])
    return ValueError(
        f"{setting}={str(load.path)!r}: no usable row among {load.rows} (columns found: {load.columns}; {shown}). "
        f"Set task.prompt_column (now {spec.prompt_column!r}) and task.answer_column (now {spec.answer_column!r}) "
        "to the columns holding the prompt and the gold answer, or task.verifier=none if there is no answer."
    )


def _held_out(rows: list[Example], test_size: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, test): test_size rows (a fraction, or a count) drawn with `seed`; both keep file order."""
    count = round(len(rows) * test_size) if test_size < 1 else int(test_size)
    count = max(1, min(count, len(rows) - 1))
    chosen = set(random.Random(f"held-out:{seed}").sample(range(len(rows)), count))
    return [r for i, r in enumerate(rows) if i not in chosen], [r for i, r in enumerate(rows) if i in chosen]


class ExactVerifier:
    """verify(completion, example): the completion's final answer equals the gold one after normalize_answer."""

    def __call__(self, completion: str, example: Example) -> bool:
        found = normalize_answer(extract_final_answer(completion))
        return found is not None and found == normalize_answer(example.answer)


def _no_verifier(completion: str, example: Example) -> bool:
    return False  # task.verifier=none: reward functions carry the whole reward


def dataset_task(
    path: str | Path,
    spec: DatasetSpec,
    test_path: str | Path | None = None,
    test_size: float = 0.1,
    seed: int = 1234,
    eval_size: int | None = None,
    timeout_s: float = 5.0,
    eval_seed: int | None = None,
) -> Task:
    """A Task over any dataset file: a shuffled endless stream over the training rows (order from `seed`); the
    held-out rows (task.test_path, else test_size rows of task.path drawn with `eval_seed`, default `seed`) capped at
    `eval_size`."""
    train = read_rows(path, spec, "train")
    if not train.examples:
        raise _no_rows_error(train, spec, "task.path")
    skipped = train.skipped
    if test_path is not None:
        test = read_rows(test_path, spec, "test")
        if not test.examples:
            raise _no_rows_error(test, spec, "task.test_path")
        skipped += test.skipped
        train_rows, test_rows = train.examples, test.examples
    else:
        if len(train.examples) < 2:
            raise ValueError(f"task.path={str(path)!r} has one usable row: nothing to hold out; set task.test_path.")
        train_rows, test_rows = _held_out(train.examples, test_size, seed if eval_seed is None else eval_seed)
    if skipped:
        reasons = "; ".join(train.reasons[:5])
        logger.warning("dataset %s: skipped %d unusable rows (%s)", path, skipped, reasons)
    verify: Callable[[str, Example], bool] = {"math": MathVerifier(timeout_s), "exact": ExactVerifier()}.get(
        spec.verifier, _no_verifier
    )
    if spec.verifier == "math":
        preload_math_verify()  # forked reward workers inherit it
    return Task(
        name="dataset",
        train=ShuffledStream(train_rows, seed),
        test=test_rows if eval_size is None else test_rows[:eval_size],
        verify=verify,
        use_chat_template=True,
        skipped_rows=skipped,
        extract=extract_final_answer,
    )
