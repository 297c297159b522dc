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

# kelvin/recipes: the repository's recipes/ (a link in a clone, package data in an install).
DEFAULT_RECIPE = Path(__file__).resolve().parent / "recipes" / "arithmetic-fixed.yaml"


def _quiet_libraries() -> None:
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _recipe_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """`kelvin train a.b=1 c.d=2` has no recipe: a first positional that is an override, not a file, is one."""
    if args.recipe and "=" in args.recipe and not Path(args.recipe).exists():
        return None, [args.recipe, *args.overrides]
    return args.recipe, list(args.overrides)


def _run_train(args: argparse.Namespace) -> int:
    from kelvin.config import ConfigError, load_config
    from kelvin.rl import launch

    recipe, overrides = _recipe_and_overrides(args)
    if args.num_processes is not None:
        overrides.append(f"trainer.num_processes={args.num_processes}")
    try:
        config = load_config(recipe, overrides)
    except ConfigError as err:
        print(f"Config error: {err}", file=sys.stderr)
        return 2
    output = Path(
        args.output_dir or f"runs/{Path(args.recipe).stem if args.recipe else 'train'}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    if launch.is_worker() and not launch.is_first_worker():
        pass  # the launching process (or worker 0) checked and prepared the output folder
    elif output.exists() and any(output.iterdir()) and not args.resume and not args.overwrite:
        print(
            f"--output-dir {output} is not empty. Pass --resume to continue it or --overwrite to start afresh.",
            file=sys.stderr,
        )
        return 2
    if args.overwrite and output.exists() and not args.resume:
        import shutil

        shutil.rmtree(output)
    if config.trainer.num_processes > 1 and not launch.is_worker():
        worker_args = ["train", *([recipe] if recipe else []), *overrides, "--output-dir", str(output)]
        return launch.run_workers(config.trainer.num_processes, worker_args + (["--resume"] if args.resume else []))
    from kelvin.rl.checkpoint import CheckpointMismatch
    from kelvin.rl.trainer import Trainer

    trainer = Trainer(config, output)
    try:
        summary = trainer.train(resume=args.resume)
    except CheckpointMismatch as err:
        print(f"Cannot resume: {err}", file=sys.stderr)
        return 2
    if trainer.is_main:
        before = summary.get("accuracy_before")
        after = summary.get("accuracy_after")
        if before is not None and after is not None:
            print(f"held-out accuracy (T={config.trainer.eval_temperature}): {before:.3f} -> {after:.3f}")
        print(f"run folder: {output}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from kelvin.experiments.demo import run_demo

    return run_demo(args)


def _run_compare(args: argparse.Namespace) -> int:
    from kelvin.config import ConfigError
    from kelvin.experiments.recipe import load_comparison
    from kelvin.experiments.runner import ComparisonError, run_comparison

    try:
        comparison = load_comparison(args.recipe, args.overrides, seeds=args.seeds, steps=args.steps)
    except ConfigError as err:
        print(f"Config error: {err}", file=sys.stderr)
        return 2
    output = Path(args.output_dir or f"runs/compare-{comparison.name}")
    try:
        outcome = run_comparison(comparison, output, progress=not args.no_progress)
    except ComparisonError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    print(outcome.report.summary_text)
    print()
    print(outcome.report.results.statement)
    print(f"report: {outcome.report.path.resolve()}")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from kelvin.experiments.report import ComparisonReport, write_report

    try:
        made = write_report(args.folder)
    except FileNotFoundError as err:
        print(f"Error: {err}", file=sys.stderr)
        return 2
    if isinstance(made, ComparisonReport):
        print(made.summary_text)
        print()
        print(made.results.statement)
        print(f"report: {made.path.resolve()}")
    else:
        for path in made:
            print(path)
    return 0


def _run_config(args: argparse.Namespace) -> int:
    from kelvin.config import ConfigError, explain, load_config, to_dict

    if args.explain:
        print("\n".join(explain()))
        return 0
    try:
        config = load_config(*_recipe_and_overrides(args))
    except ConfigError as err:
        print(f"Config error: {err}", file=sys.stderr)
        return 2
    import yaml

    print(yaml.safe_dump(to_dict(config), sort_keys=False))
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    from kelvin.eval.generate import generate, render_generation

    try:
        result = generate(
            args.model,
            args.prompt,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            apply_chat_template=args.chat_template,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"generate: {err}", file=sys.stderr)
        return 2
    if result.learned:
        source = "learned per-token temperature"
    else:
        source = "greedy" if args.temperature == 0 else f"fixed temperature {result.taus[0][0]:g}"
    for prompt, text, taus in zip(result.prompts, result.texts, result.taus):
        mean = sum(taus) / max(len(taus), 1)
        print(f"--- {prompt!r} ({source}; mean tau {mean:.3f}, range {min(taus):.3f}-{max(taus):.3f})")
        print(text)
    if args.html or args.png:
        render_generation(result, args.html, args.png)
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
    train.add_argument(
        "--num-processes", type=int, help="data-parallel processes (= trainer.num_processes=N); Kelvin starts them"
    )
    train.set_defaults(func=_run_train)

    demo = sub.add_parser(
        "demo", help="the embedded comparison: fixed T vs schedule vs TAMPO vs IntroLLM on arithmetic, tiny model, CPU"
    )
    demo.add_argument("overrides", nargs="*", help="section.field=value overrides applied to every arm")
    demo.add_argument("--output-dir", default="runs/demo", help="where the demo writes its runs and report")
    demo.add_argument("--steps", type=int, default=None, help="RL steps per arm")
    demo.add_argument("--seeds", type=int, default=None, help="seeds per arm (seeds 0..N-1)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_run_demo)

    compare = sub.add_parser("compare", help="train every arm x seed of a comparison recipe, evaluate, report")
    compare.add_argument("recipe", help="comparison recipe (base:, arms:, seeds:, evaluation:), e.g. recipes/demo.yaml")
    compare.add_argument("overrides", nargs="*", help="key=value: trainer.steps=50 (base), evaluation.k=8, seeds=[0,1]")
    compare.add_argument("--output-dir", help="comparison folder (default runs/compare-<name>); rerun to resume")
    compare.add_argument("--seeds", type=int, default=None, help="run seeds 0..N-1 (overrides the recipe's seeds)")
    compare.add_argument("--steps", type=int, default=None, help="training steps per run (trainer.steps)")
    compare.add_argument("--no-progress", action="store_true", help="no progress bar (one line per finished run)")
    compare.set_defaults(func=_run_compare)

    report = sub.add_parser("report", help="(re)write the report of a comparison folder, or plots of a training run")
    report.add_argument("folder", help="a kelvin compare output folder, or a kelvin train run folder")
    report.set_defaults(func=_run_report)

    gen = sub.add_parser("generate", help="sample from a saved model, with its learned per-token temperatures if any")
    gen.add_argument("model", help="local model folder (e.g. RUN/model); a temperature head in it is used")
    gen.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for several)")
    gen.add_argument("--temperature", type=float, default=None, help="fixed tau for every token (0 = greedy)")
    gen.add_argument("--max-new-tokens", type=int, default=256)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--chat-template", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    gen.add_argument("--html", help="write the completions with tokens coloured by tau to this HTML file")
    gen.add_argument("--png", help="the same as a PNG image")
    gen.set_defaults(func=_run_generate)

    config = sub.add_parser("config", help="print the resolved config of a recipe, or every field's meaning")
    config.add_argument("recipe", nargs="?")
    config.add_argument("overrides", nargs="*")
    config.add_argument("--explain", action="store_true", help="list every field with its default and meaning")
    config.set_defaults(func=_run_config)

    from kelvin.eval.cli import add_eval_arguments, run_eval
    from kelvin.models.install import add_models_arguments, run_models

    add_eval_arguments(
        sub.add_parser("eval", help="benchmarks: avg@k, pass@k, maj@k, temperature sweeps")
    ).set_defaults(func=run_eval)
    add_models_arguments(sub.add_parser("models", help="install real models offline (SmolLM2)")).set_defaults(
        func=run_models
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
