"""Imports run one way (README, Layout): every kelvin module imports only from its own layer or the ones below.

Parsed from the source (function-level imports included), so an upward import fails here before it becomes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kelvin"

# Top to bottom. A module belongs to the first layer one of whose prefixes it starts with.
LAYERS: list[tuple[str, ...]] = [
    ("kelvin.cli",),
    ("kelvin.experiments",),
    ("kelvin.rl.trainer",),
    ("kelvin.eval",),
    (
        "kelvin.rl.engine",
        "kelvin.rl.vllm_engine",
        "kelvin.rl.sampling",
        "kelvin.rl.policy_pass",
        "kelvin.rl.step_metrics",
        "kelvin.rl.step_record",
        "kelvin.rl.dynamic_sampling",
        "kelvin.rl.run_log",
        "kelvin.rl.checkpoint",
        "kelvin.rl.optimizer",
        "kelvin.rl.preflight",
    ),
    ("kelvin.controllers",),
    ("kelvin.rl.rollouts", "kelvin.rl.logprobs", "kelvin.rl.grpo", "kelvin.rl.distributed", "kelvin.rl"),
    ("kelvin.models",),
    ("kelvin.rewards", "kelvin.tasks"),
    ("kelvin.config", "kelvin"),
]


def layer_of(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to the README's Layout).")


def kelvin_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
    return [m for m in found if m == "kelvin" or m.startswith("kelvin.")]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[module_name(p) for p in MODULES])
def test_imports_run_one_way(path: Path) -> None:
    here = module_name(path)
    upward = [m for m in kelvin_imports(path) if layer_of(m) < layer_of(here)]
    assert not upward, f"{here} (layer {layer_of(here)}) imports upward: {upward}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    fake = tmp_path / "kelvin" / "tasks" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from kelvin.rl.trainer import Trainer\n")
    assert [layer_of(m) for m in kelvin_imports(fake)] == [2] and layer_of("kelvin.tasks.x") == 8


def _string_constants(tree: ast.AST) -> list[ast.Constant]:
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and ast.get_docstring(node, clean=False) is not None
    }
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
    ]


@pytest.mark.parametrize("path", [p for p in MODULES if "controllers" not in p.parts], ids=module_name)
def test_no_module_outside_controllers_names_a_controller(path: Path) -> None:
    """The loop asks hooks, never which controller it has: no controller module import, no `== "tampo"`."""
    from kelvin.controllers import CONTROLLERS

    tree = ast.parse(path.read_text())
    specific = [
        m for m in kelvin_imports(path) if m.startswith("kelvin.controllers.") and m.split(".")[2] not in ("base",)
    ]
    specific = [m for m in specific if m != "kelvin.controllers.registry"]
    names = [f"line {c.lineno}: {c.value!r}" for c in _string_constants(tree) if c.value in CONTROLLERS]
    assert not specific and not names, f"{module_name(path)} names controllers: {specific + names}"
