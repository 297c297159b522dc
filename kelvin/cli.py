"""`kelvin demo | train | config` (and the commands other modules register: eval, generate, compare, report, models).

kelvin train recipes/arithmetic-fixed.yaml trainer.steps=50 sampling.temperature=0.8 --output-dir runs/x
kelvin train recipes/arithmetic-fixed.yaml --output-dir runs/x --resume
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = REPO_ROOT / "recipes" / "arithmetic-fixed.yaml"


def _quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _run_train(args: argparse.Namespace) -> int:
    from kelvin.config import ConfigError, load_config

    try:
        config = load_config(args.recipe, args.overrides)
    except ConfigError as err:
        print(f"Config error: {err}", file=sys.stderr)
        return 2
    from kelvin.trainer import Trainer

    output = Path(
        args.output_dir or f"runs/{Path(args.recipe).stem if args.recipe else 'train'}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if output.exists() and any(output.iterdir()) and not args.resume and not args.overwrite:
        print(
            f"--output-dir {output} is not empty. Pass --resume to continue it or --overwrite to start afresh.",
            file=sys.stderr,
        )
        return 2
    if args.overwrite and output.exists() and not args.resume:
        import shutil

        shutil.rmtree(output)
    trainer = Trainer(config, output)
    summary = trainer.train(resume=args.resume)
    if trainer.is_main:
        before = summary.get("accuracy_before")
        after = summary.get("accuracy_after")
        if before is not None and after is not None:
            print(f"held-out accuracy (T={config.trainer.eval_temperature}): {before:.3f} -> {after:.3f}")
        print(f"run folder: {output}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from kelvin.demo import run_demo

    return run_demo(args)


def _run_config(args: argparse.Namespace) -> int:
    from kelvin.config import ConfigError, explain, load_config, to_dict

    if args.explain:
        print("\n".join(explain()))
        return 0
    try:
        config = load_config(args.recipe, args.overrides)
    except ConfigError as err:
        print(f"Config error: {err}", file=sys.stderr)
        return 2
    import yaml

    print(yaml.safe_dump(to_dict(config), sort_keys=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kelvin", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="GRPO training from a YAML recipe plus dotted overrides")
    train.add_argument("recipe", nargs="?", help="YAML recipe (see recipes/)")
    train.add_argument("overrides", nargs="*", help="section.field=value overrides")
    train.add_argument("--output-dir", help="run folder (default runs/<recipe>-<time>)")
    train.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    train.add_argument("--overwrite", action="store_true", help="delete a non-empty output folder first")
    train.set_defaults(func=_run_train)

    demo = sub.add_parser("demo", help="the embedded default: RL on arithmetic with a tiny model, on CPU")
    demo.add_argument("overrides", nargs="*", help="section.field=value overrides applied to every arm")
    demo.add_argument("--output-dir", default="runs/demo", help="where the demo writes its runs and report")
    demo.add_argument("--steps", type=int, default=None, help="RL steps per arm")
    demo.add_argument("--seeds", type=int, default=None, help="seeds per arm")
    demo.set_defaults(func=_run_demo)

    config = sub.add_parser("config", help="print the resolved config of a recipe, or every field's meaning")
    config.add_argument("recipe", nargs="?")
    config.add_argument("overrides", nargs="*")
    config.add_argument("--explain", action="store_true", help="list every field with its default and meaning")
    config.set_defaults(func=_run_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
