"""The math benchmarks of the TAMPO paper (kelvin/data/math_eval) and GSM8K's test split, as Examples and Tasks.

Gold answers, per file (kelvin/data/README.md):
    aime24         `answer` (a string such as "204")
    amc23          `answer`, a float: 27.0 -> "27" (non-integers keep their decimals)
    math500        `answer` (LaTeX, e.g. "\\frac{14}{3}")
    minerva_math   the last \\boxed{...} of `solution`
    olympiadbench  `final_answer`, a list (or a list written as a string, "['2']"); each entry loses its '$'
                   delimiters and a final '.', and several entries are joined with ", " ("$69$,$84$" -> "69,84")
    gsm8k          the number after '####' of test.jsonl's `answer`
A row whose problem or gold answer cannot be read is skipped and counted (`BenchmarkLoad.skipped`, `reasons`).
Prompts are the problem followed by MATH_INSTRUCTION (answer in \\boxed{}), for the chat template.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from kelvin.rewards.math_answers import extract_boxed, extract_final_answer, preload_math_verify, remove_math_delimiters
from kelvin.tasks.base import Example, Task
from kelvin.tasks.data import default_data_root, iter_jsonl, require_file
from kelvin.tasks.gsm8k import read_gsm8k_split
from kelvin.tasks.math_common import CycleStream, MathVerifier, math_prompt

logger = logging.getLogger(__name__)

MATH_EVAL_BENCHMARKS = ("aime24", "amc23", "math500", "minerva_math", "olympiadbench")
BENCHMARK_NAMES = (*MATH_EVAL_BENCHMARKS, "gsm8k")


class _BadRow(ValueError):
    """A row without a usable problem or gold answer (the message says why)."""


@dataclass
class BenchmarkLoad:
    name: str
    path: Path
    examples: list[Example]
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)  # "line N: why", one per skipped row


def _text(row: dict[str, Any], *keys: str) -> str:
    for key in keys:
        value = row.get(key)
        if isinstance(value, str) and value.strip():
            return value
    raise _BadRow(f"no {' or '.join(keys)} text")


def _number_text(value: Any) -> str:
    """27.0 -> "27", 0.5 -> "0.5", "12" -> "12"."""
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise _BadRow(f"answer {value!r} is not a number") from None
    if not number.is_finite():
        raise _BadRow(f"answer {value!r} is not finite")
    return str(int(number)) if number == number.to_integral_value() else format(number.normalize(), "f")


def _olympiad_answer(value: Any) -> str:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise _BadRow(f"final_answer {value[:60]!r} is not a list literal") from None
    if not isinstance(value, (list, tuple)):
        raise _BadRow(f"final_answer {value!r:.60} is not a list")
    # Entries are LaTeX in '$' delimiters, sometimes several in one entry ("$69$,$84$") and with a final '.'.
    parts = [remove_math_delimiters(str(v)).rstrip(".").strip() for v in value]
    parts = [p for p in parts if p]
    if not parts:
        raise _BadRow("final_answer is empty")
    return ", ".join(parts)


def _aime24(row: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    answer = str(row.get("answer", "")).strip()
    if not answer:
        raise _BadRow("empty answer")
    return _text(row, "problem", "question"), answer, {"url": row.get("url")}


def _amc23(row: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    if row.get("answer") is None:
        raise _BadRow("no answer")
    return _text(row, "problem", "question"), _number_text(row["answer"]), {"url": row.get("url")}


def _math500(row: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    answer = _text(row, "answer").strip()
    return _text(row, "problem"), answer, {"subject": row.get("subject"), "level": row.get("level")}


def _minerva(row: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    answer = extract_boxed(_text(row, "solution"))
    if not answer:
        raise _BadRow("no \\boxed{} answer in the solution")
    return _text(row, "problem"), answer, {"type": row.get("type")}


def _olympiadbench(row: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    question = _text(row, "question")
    context = row.get("context")
    problem = f"{context.strip()}\n\n{question}" if isinstance(context, str) and context.strip() else question
    columns = {k: row.get(k) for k in ("is_multiple_answer", "unit", "answer_type", "subfield")}
    return problem, _olympiad_answer(row.get("final_answer")), columns


_READERS: dict[str, Callable[[dict[str, Any]], tuple[str, str, dict[str, Any]]]] = {
    "aime24": _aime24,
    "amc23": _amc23,
    "math500": _math500,
    "minerva_math": _minerva,
    "olympiadbench": _olympiadbench,
}


def _check_name(name: str) -> None:
    if name not in BENCHMARK_NAMES:
        raise ValueError(f"benchmark {name!r} is unknown; choose from {', '.join(BENCHMARK_NAMES)}.")


def benchmark_path(name: str, path: str | Path | None = None) -> Path:
    """The JSONL file of a benchmark. `path` may be the file itself, a folder holding `<name>.jsonl` (or
    `test.jsonl` for gsm8k), or a data root holding math_eval/ and gsm8k/; None means the shipped kelvin/data
    ($KELVIN_DATA overrides)."""
    _check_name(name)
    filename = "test.jsonl" if name == "gsm8k" else f"{name}.jsonl"
    subfolder = "gsm8k" if name == "gsm8k" else "math_eval"
    if path is not None and Path(path).is_file():
        return Path(path)
    root = Path(path) if path is not None else default_data_root()
    for candidate in (root / filename, root / subfolder / filename):
        if candidate.is_file():
            return candidate
    return require_file(root / subfolder / filename, f"benchmark {name}", "the benchmark path")


def read_benchmark(name: str, path: str | Path | None = None) -> BenchmarkLoad:
    """Every usable row of a benchmark, and how many rows were skipped and why."""
    file = benchmark_path(name, path)
    if name == "gsm8k":
        split = read_gsm8k_split(file, "test")
        return BenchmarkLoad(name, file, split.examples, split.skipped, [f"{split.skipped} rows without '####'"])
    reader = _READERS[name]
    load = BenchmarkLoad(name, file, [])
    for line, row in iter_jsonl(file):
        try:
            if row is None:
                raise _BadRow("not a JSON object")
            problem, answer, columns = reader(row)
        except _BadRow as why:
            load.skipped += 1
            load.reasons.append(f"line {line}: {why}")
            continue
        row_id = next((row[k] for k in ("id", "unique_id", "idx") if row.get(k) is not None), line)
        load.examples.append(
            Example(id=f"{name}-{row_id}", prompt=math_prompt(problem), answer=answer, columns=columns)
        )
    return load


def load_benchmark(name: str, path: str | Path | None = None) -> list[Example]:
    """The examples of a benchmark (see the module docstring for each answer format). Skipped rows are logged as a
    warning with their count; `read_benchmark` returns the count and the reasons."""
    load = read_benchmark(name, path)
    if load.skipped:
        logger.warning("%s: skipped %d rows of %s: %s", name, load.skipped, load.path, "; ".join(load.reasons[:5]))
    return load.examples


def benchmark_task(name: str, path: str | Path | None = None, timeout_s: float = 5.0) -> Task:
    """A benchmark as a Task: train cycles over its rows in file order, test is all rows; math-verify verifier."""
    load = read_benchmark(name, path)
    if not load.examples:
        raise ValueError(f"benchmark {name} at {load.path} has no usable rows ({load.skipped} skipped).")
    preload_math_verify()  # forked reward workers inherit it
    return Task(
        name=name,
        train=CycleStream(load.examples),
        test=load.examples,
        verify=MathVerifier(timeout_s),
        use_chat_template=True,
        skipped_rows=load.skipped,
        extract=extract_final_answer,
    )
