"""Tasks: prompts plus a verifier. `build_task` maps the config's task section to one."""

from __future__ import annotations

from kelvin.config import KelvinConfig
from kelvin.tasks.base import Example, Task

__all__ = ["Example", "Task", "build_task"]


def build_task(config: KelvinConfig) -> Task:
    """The task named by `config.task.name`: 'arithmetic', 'gsm8k', a benchmark (aime24, amc23, math500,
    minerva_math, olympiadbench) used for training (train cycles over its rows, test is every row), 'dataset' (any
    file, kelvin/tasks/dataset.py) or 'reasoning_gym' (procedural problems, kelvin/tasks/reasoning_gym.py)."""
    t = config.task
    if t.name == "arithmetic":
        from kelvin.tasks.arithmetic import arithmetic_task

        return arithmetic_task(
            seed=t.seed,
            min_digits=t.min_digits,
            max_digits=t.max_digits,
            eval_size=t.eval_size,
            style=t.arithmetic_style,
            eval_split=t.eval_split,
            eval_seed=t.eval_seed,
        )
    if t.name == "gsm8k":
        from kelvin.tasks.gsm8k import gsm8k_task

        return gsm8k_task(t.data_path, seed=t.seed, eval_size=t.eval_size, timeout_s=config.reward.timeout_s)
    if t.name == "dataset":
        from kelvin.tasks.dataset import DatasetSpec, dataset_task

        spec = DatasetSpec(t.prompt_column, t.answer_column, t.verifier, t.instruction)
        return dataset_task(
            t.path,
            spec,
            t.test_path,
            t.test_size,
            seed=t.seed,
            eval_size=t.eval_size,
            timeout_s=config.reward.timeout_s,
            eval_seed=t.eval_seed,
        )
    if t.name == "reasoning_gym":
        from kelvin.tasks.reasoning_gym import reasoning_gym_task

        return reasoning_gym_task(
            t.dataset, t.options, seed=t.seed, eval_size=t.eval_size, instruction=t.instruction, eval_seed=t.eval_seed
        )
    from kelvin.tasks.benchmarks import BENCHMARK_NAMES, benchmark_task

    if t.name in BENCHMARK_NAMES:
        return benchmark_task(t.name, t.data_path, timeout_s=config.reward.timeout_s)
    raise ValueError(
        f"task.name={t.name!r} is unknown; choose arithmetic, gsm8k, dataset, reasoning_gym or one of "
        f"{BENCHMARK_NAMES}."
    )
