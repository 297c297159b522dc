"""`kelvin demo | train | config` (and the commands other modules register: eval, generate, compare, report, models).

kelvin train recipes/arithmetic-fixed.yaml trainer.steps=50 sampling.temperature=0.8 --output-dir runs/x
kelvin train recipes/arithmetic-fixed.yaml --output-dir runs/x --resume
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import time
from pathlib import Path
from typing import Any

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


class UsageError(ValueError):
    """The command line asks for something that cannot work; the message says what to pass instead."""


def _is_main_process() -> bool:
    """Rank 0 under `accelerate launch` / torchrun (which set RANK), or a plain single process."""
    return os.environ.get("RANK", "0") == "0"


def _run_train(args: argparse.Namespace) -> int:
    from kelvin.config import load_config
    from kelvin.rl import launch

    recipe, overrides = _recipe_and_overrides(args)
    if args.num_processes is not None:
        overrides.append(f"trainer.num_processes={args.num_processes}")
    config = load_config(recipe, overrides)
    if args.resume and args.overwrite:
        raise UsageError("--resume continues a run and --overwrite replaces it; pass one of them.")
    if args.resume and not args.output_dir:
        raise UsageError("--resume needs --output-dir: the run folder to continue, e.g. --output-dir runs/x --resume.")
    output = Path(
        args.output_dir or f"runs/{Path(args.recipe).stem if args.recipe else 'train'}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    from kelvin.rl.preflight import check_before_work, check_resume
    from kelvin.rl.run_folder import RunFolderError, RunLock, clear_run_folder, has_run_content
    from kelvin.rl.trainer import Trainer

    if launch.launched_by_kelvin():  # the launching process below holds the lock and made the checks
        trainer = Trainer(config, output)
        summary = trainer.train(resume=args.resume)
        return _print_summary(trainer, summary, config, output)
    existed = output.exists()
    main_process = _is_main_process()
    lock = RunLock(output) if main_process else contextlib.nullcontext()
    try:
        with lock:  # one writer per folder, from here until the run is over
            if args.resume and not has_run_content(output):
                raise RunFolderError(
                    f"nothing to resume in --output-dir {output}: it is empty. Drop --resume to start a run there."
                )
            if not args.resume and not args.overwrite and has_run_content(output):
                raise RunFolderError(
                    f"--output-dir {output} is not empty. Pass --resume to continue it or --overwrite to start afresh."
                )
            if args.resume:
                check_resume(output, config)
            check_before_work(config)
            if config.trainer.num_processes > 1 and not launch.is_worker():
                # The workers set up the model themselves, so the checks above are the last ones made here.
                if args.overwrite:
                    clear_run_folder(output)
                worker_args = ["train", *([recipe] if recipe else []), *overrides, "--output-dir", str(output)]
                return launch.run_workers(
                    config.trainer.num_processes, worker_args + (["--resume"] if args.resume else [])
                )
            trainer = Trainer(config, output)  # loads the model, data and rewards: the last checks before work
            if args.overwrite and main_process:
                clear_run_folder(output)  # only now: a failed start above leaves the old run as it was
            summary = trainer.train(resume=args.resume)
    except BaseException:
        if main_process and not existed and output.is_dir() and not any(output.iterdir()):
            output.rmdir()  # a start that failed leaves no empty folder behind
        raise
    return _print_summary(trainer, summary, config, output)


def _print_summary(trainer: Any, summary: dict[str, Any], config: Any, output: Path) -> int:
    if trainer.is_main:
        before = summary.get("accuracy_before")
        after = summary.get("accuracy_after")
        if before is not None and after is not None:
            print(f"held-out accuracy (T={config.trainer.eval_temperature}): {before:.3f} -> {after:.3f}")
        print(f"run folder: {output}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from kelvin.experiments.demo import run_demo
    from kelvin.rl.run_folder import RunLock

    with RunLock(Path(args.output_dir)):  # one writer per comparison folder, as for a training run
        return run_demo(args)


def _run_compare(args: argparse.Namespace) -> int:
    from kelvin.experiments.recipe import load_comparison
    from kelvin.experiments.runner import run_comparison

    comparison = load_comparison(args.recipe, args.overrides, seeds=args.seeds, steps=args.steps)
    output = Path(args.output_dir or f"runs/compare-{comparison.name}")
    from kelvin.rl.run_folder import RunLock

    with RunLock(output):  # one writer per comparison folder, as for a training run
        outcome = run_comparison(comparison, output, progress=not args.no_progress, jobs=args.jobs)
    print(outcome.report.summary_text)
    print()
    print(outcome.report.results.statement)
    print(f"report: {outcome.report.path.resolve()}")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from kelvin.experiments.report import ComparisonReport, write_report

    made = write_report(args.folder)
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
    from kelvin.config import explain, load_config, to_dict

    if args.explain:
        print("\n".join(explain()))
        return 0
    config = load_config(*_recipe_and_overrides(args))
    import yaml

    print(yaml.safe_dump(to_dict(config), sort_keys=False))
    return 0


def _run_generate(args: argparse.Namespace) -> int:
    from kelvin.eval.cli import check_sampling_options
    from kelvin.eval.generate import generate, render_generation

    check_sampling_options(args)
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
    parser = argparse.ArgumentParser(
        prog="kelvin",
        description=__doc__ + "\nAdd --debug (or set KELVIN_DEBUG=1) to any command to see a full traceback on error.",
        formatter_class=argparse.RawTextHelpFormatter,
    )
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
    demo.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="runs trained at once, one thread each (default: 2 on a machine with 2+ cores, halving the wall time)",
    )
    demo.set_defaults(func=_run_demo)

    compare = sub.add_parser("compare", help="train every arm x seed of a comparison recipe, evaluate, report")
    compare.add_argument("recipe", help="comparison recipe (base:, arms:, seeds:, evaluation:), e.g. recipes/demo.yaml")
    compare.add_argument("overrides", nargs="*", help="key=value: trainer.steps=50 (base), evaluation.k=8, seeds=[0,1]")
    compare.add_argument("--output-dir", help="comparison folder (default runs/compare-<name>); rerun to resume")
    compare.add_argument("--seeds", type=int, default=None, help="run seeds 0..N-1 (overrides the recipe's seeds)")
    compare.add_argument("--steps", type=int, default=None, help="training steps per run (trainer.steps)")
    compare.add_argument("--no-progress", action="store_true", help="no progress bar (one line per finished run)")
    compare.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once, each in its own process (set trainer.torch_threads=1)",
    )
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


# Errors that mean "the input is wrong" (exit code 2): their message already says what, where and the fix.
def _user_error_types(command: str) -> tuple[type[BaseException], ...]:
    from kelvin.config import ConfigError
    from kelvin.rl.checkpoint import CheckpointError, CheckpointMismatch
    from kelvin.rl.run_folder import RunFolderError

    types: tuple[type[BaseException], ...] = (
        ConfigError,
        UsageError,
        RunFolderError,
        CheckpointError,
        CheckpointMismatch,
    )
    types += (FileNotFoundError, NotADirectoryError)
    runner = sys.modules.get("kelvin.experiments.runner")  # loaded only by `kelvin compare` / `kelvin demo`
    if runner is not None:
        types += (runner.ComparisonError,)
    if command in ("eval", "generate"):  # their option checks raise ValueError
        types += (ValueError,)
    return types


def _explains_itself(err: BaseException) -> bool:
    """Failures during the work whose message already says what happened and what to do (exit code 1)."""
    from kelvin.models.loading import ModelLoadError
    from kelvin.rl.guards import NonFiniteGradientError

    return isinstance(err, (NonFiniteGradientError, ModelLoadError)) or (
        isinstance(err, OSError) and err.errno == errno.ENOSPC
    )


def _message(err: BaseException) -> str:
    text = str(err).strip()
    if isinstance(err, OSError) and err.strerror and err.filename:  # e.g. PermissionError: name the path
        text = f"{err.strerror}: {err.filename}"
    elif isinstance(err, OSError) and err.errno == errno.ENOSPC and "no space left on device at" not in text:
        text = f"no space left on device ({text}); free some space and rerun with --resume"  # e.g. a log write
    return text or type(err).__name__


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse, accepting `section.field=value` overrides anywhere (also after options such as --output-dir)."""
    args, extra = parser.parse_known_args(argv)
    overrides = [item for item in extra if "=" in item and not item.startswith("-")]
    unknown = [item for item in extra if item not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        parser.parse_args(argv)  # argparse's own "unrecognized arguments" message and exit code 2
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run one command. Any error becomes one line, `kelvin <command>: error: <what, where, fix>` (exit 2 for bad
    input, 1 for a failure during the work); the traceback only with --debug or KELVIN_DEBUG=1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("KELVIN_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = _parse(parser, argv)
    command = f"kelvin {args.command}"
    try:
        _quiet_libraries()
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        user_error = isinstance(err, _user_error_types(args.command))
        text = _message(err)
        if not user_error and not _explains_itself(err):
            text = f"{type(err).__name__}: {text} (rerun with --debug or KELVIN_DEBUG=1 for the traceback)"
        print(f"{command}: error: {text}", file=sys.stderr)
        return 2 if user_error else 1


if __name__ == "__main__":
    sys.exit(main())
