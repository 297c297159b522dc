"""Tasks: prompts plus a verifier. `build_task` maps the config to one."""

from __future__ import annotations

from kelvin.config import KelvinConfig
from kelvin.tasks.base import Example, Task

__all__ = ["Example", "Task", "build_task"]


def build_task(config: KelvinConfig) -> Task:
    t = config.task
    if t.name == "arithmetic":
        from kelvin.tasks.arithmetic import arithmetic_task

        return arithmetic_task(seed=t.seed, min_digits=t.min_digits, max_digits=t.max_digits, eval_size=t.eval_size)
    raise ValueError(f"task.name={t.name!r} is not available yet.")
