"""`kelvin demo`: the embedded default run — RL on arithmetic with the warmed-up tiny model, on CPU."""

from __future__ import annotations

import argparse
from pathlib import Path

from kelvin.config import ConfigError, load_config

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "arithmetic-fixed.yaml"


def run_demo(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"trainer.steps={args.steps}")
    try:
        config = load_config(RECIPE, overrides)
    except ConfigError as err:
        print(f"Config error: {err}")
        return 2
    from kelvin.trainer import Trainer

    output = Path(args.output_dir)
    trainer = Trainer(config, output)
    resume = (output / "checkpoints").is_dir()
    summary = trainer.train(resume=resume)
    before, after = summary.get("accuracy_before"), summary.get("accuracy_after")
    if before is not None and after is not None:
        print(f"held-out accuracy at T={config.trainer.eval_temperature}: {before:.3f} -> {after:.3f}")
    print(f"run folder: {output.resolve()}")
    return 0
