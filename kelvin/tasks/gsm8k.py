"""GSM8K grade-school word problems (kelvin/data/gsm8k/{train,test}.jsonl, fields `question` and `answer`).

The gold answer is the number after '####' at the end of the reference solution, thousands separators removed.
Prompts are the question followed by MATH_INSTRUCTION ("Please reason step by step, and put your final answer
within \\boxed{}."), wrapped in the model's chat template. The verifier reads the model's final answer (the last
\\boxed{}, else after '####', else after 'The answer is', else the last number) and compares it with math-verify.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from kelvin.rewards.math_answers import extract_final_answer, preload_math_verify
from kelvin.tasks.base import Example, Task
from kelvin.tasks.data import default_data_root, iter_jsonl, require_file
from kelvin.tasks.math_common import MathVerifier, ShuffledStream, math_prompt

logger = logging.getLogger(__name__)

_GOLD_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def parse_gsm8k_answer(solution: str) -> str | None:
    """The gold number after the last '####' ("#### 1,200" -> "1200"); None when absent or not a number."""
    if "####" not in solution:
        return None
    tail = solution.rsplit("####", 1)[1].strip().replace(",", "")
    return tail if _GOLD_NUMBER.fullmatch(tail) else None


@dataclass
class SplitLoad:
    examples: list[Example]
    skipped: int


def read_gsm8k_split(path: Path, split: str) -> SplitLoad:
    """Every usable row of a GSM8K JSONL file; rows that are not JSON, lack fields, or have no '#### number' are
    skipped and counted."""
    examples: list[Example] = []
    skipped = 0
    for line, row in iter_jsonl(path):
        question = row.get("question") if row else None
        solution = row.get("answer") if row else None
        gold = parse_gsm8k_answer(solution) if isinstance(solution, str) else None
        if not isinstance(question, str) or not question.strip() or gold is None:
            skipped += 1
            logger.debug("gsm8k %s line %d skipped: no question or no '#### number' answer", split, line)
            continue
        examples.append(
            Example(
                id=f"gsm8k-{split}-{line}",
                prompt=math_prompt(question),
                answer=gold,
                columns={"question": question, "solution": solution},
            )
        )
    return SplitLoad(examples, skipped)


def gsm8k_folder(data_path: str | Path | None) -> Path:
    """The folder holding train.jsonl and test.jsonl: `data_path`, or the shipped kelvin/data/gsm8k by default."""
    return Path(data_path) if data_path is not None else default_data_root() / "gsm8k"


def gsm8k_task(
    data_path: str | Path | None = None, seed: int = 1234, eval_size: int | None = None, timeout_s: float = 5.0
) -> Task:
    """GSM8K: a shuffled endless stream over train.jsonl (seeded per epoch) and the first `eval_size` test rows
    (None: all 1,319). `timeout_s` bounds math-verify per completion."""
    folder = gsm8k_folder(data_path)
    train = read_gsm8k_split(require_file(folder / "train.jsonl", "gsm8k train split", "task.data_path"), "train")
    test = read_gsm8k_split(require_file(folder / "test.jsonl", "gsm8k test split", "task.data_path"), "test")
    skipped = train.skipped + test.skipped
    if skipped:
        logger.warning("gsm8k: skipped %d unusable rows in %s", skipped, folder)
    if not train.examples or not test.examples:
        raise ValueError(f"task.data_path={str(folder)!r}: no usable GSM8K rows in train.jsonl/test.jsonl.")
    preload_math_verify()  # forked reward workers inherit it
    test_rows = test.examples if eval_size is None else test.examples[:eval_size]
    return Task(
        name="gsm8k",
        train=ShuffledStream(train.examples, seed),
        test=test_rows,
        verify=MathVerifier(timeout_s),
        use_chat_template=True,
        skipped_rows=skipped,
        extract=extract_final_answer,
    )
