"""`kelvin demo`: the embedded comparison — fixed temperature vs the linear schedule vs TAMPO vs IntroLLM on the
arithmetic task with the warmed-up tiny model, on CPU (recipes/demo.yaml; about 10 minutes on 2 cores).

It is `kelvin compare recipes/demo.yaml` with a shorter command line: the same folder layout, resumable, and the
report (report.md, results.json, PNGs) states whatever the result is, with its interval over seeds.
`--steps` and `--seeds` make it longer for a serious run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kelvin.config import ConfigError
from kelvin.controllers import CONTROLLERS
from kelvin.experiments.recipe import Comparison, load_comparison

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"  # package data: works after pip install


def controller_available(name: str) -> bool:
    """Whether a controller of that name is registered in this installation (kelvin.controllers.registry)."""
    return name in CONTROLLERS


def drop_unavailable_arms(comparison: Comparison) -> list[str]:
    """Remove arms whose controller is not part of this installation; returns their names."""
    missing = [arm.name for arm in comparison.arms if not controller_available(arm.controller)]
    comparison.arms = [arm for arm in comparison.arms if arm.name not in missing]
    return missing


def run_demo(args: argparse.Namespace) -> int:
    try:
        comparison = load_comparison(RECIPE, list(args.overrides), seeds=args.seeds, steps=args.steps)
    except ConfigError as err:
        print(f"Config error: {err}", file=sys.stderr)
        return 2
    for name in drop_unavailable_arms(comparison):
        print(f"note: arm '{name}' is skipped: its controller is not in this installation.")
    if not comparison.arms:
        print("No arm of the demo can run in this installation.", file=sys.stderr)
        return 2
    from kelvin.experiments.runner import ComparisonError, run_comparison

    output = Path(args.output_dir)
    arms = ", ".join(arm.name for arm in comparison.arms)
    steps = comparison.config(comparison.arms[0], comparison.seeds[0]).trainer.steps
    print(f"Kelvin demo: {arms}; {len(comparison.seeds)} seed(s) x {steps} steps each, in {output.resolve()}")
    started = time.perf_counter()
    try:
        outcome = run_comparison(
            comparison, output, progress=not getattr(args, "no_progress", False), jobs=getattr(args, "jobs", 1)
        )
    except ComparisonError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    report = outcome.report
    print()
    print(report.summary_text)
    print()
    print(report.results.statement)
    print()
    print(f"report: {report.path.resolve()}  ({time.perf_counter() - started:.0f} s)")
    return 0
