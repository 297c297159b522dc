"""A Task is prompts plus a verifier."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Example:
    """One problem. `prompt` is the user text before any chat template, or a conversation in TRL's format
    ([{"role": "user", "content": ...}, ...]) that the chat template renders; `answer` the gold final answer."""

    id: str
    prompt: str | list[dict[str, str]]
    answer: str
    columns: dict[str, Any] = field(default_factory=dict)  # extra dataset columns, passed to reward functions


@dataclass
class Task:
    """Prompts (train stream + held-out set) and a verifier `verify(completion_text, example) -> bool`.

    `train(i)` returns the i-th training example of an endless deterministic stream, so the data position is one
    integer that checkpoints can store. `use_chat_template` says whether prompts are wrapped in the tokenizer's chat
    template (real instruct models) or fed raw (the embedded character model).
    """

    name: str
    train: Callable[[int], Example]
    test: list[Example]
    verify: Callable[[str, Example], bool]
    use_chat_template: bool = True
    skipped_rows: int = 0  # rows of the source data that could not be used (counted, never fatal)
    # The final answer a completion states (None: none found), for majority voting (maj@k) in evaluation.
    extract: Callable[[str], str | None] | None = None
    # Held-out problems for choosing settings (a temperature, a checkpoint) without looking at `test`: disjoint from
    # it and from training, built on demand (generators can be slow). None: the task has no validation split, and
    # choosing on it is refused.
    validation: Callable[[], list[Example]] | None = None
