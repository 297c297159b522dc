"""`kelvin eval MODEL --benchmarks aime24,math500 --k 8 --temperature 0.6 ...`: benchmarks -> table + JSON.

MODEL is a run folder (its final model in `model/`) or any local Hugging Face model folder. `--temperature` takes a
comma list for a sweep (0 = greedy); `learned` samples every token's temperature from the model's saved temperature
head (an IntroLLM run saves one beside the model), and may be mixed with numbers: `--temperature learned,0.6`.
Wire into a CLI with `add_eval_arguments(parser)` and `run_eval(args)`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch and the evaluation stack load only when the command runs (fast `kelvin --help`)
    from kelvin.controllers.base import TemperatureController
    from kelvin.eval.evaluation import EvalReport
    from kelvin.tasks.base import Task

DEFAULT_BENCHMARKS = "aime24,amc23,math500,minerva_math,olympiadbench"
EVAL_NAMES = ("aime24", "amc23", "math500", "minerva_math", "olympiadbench", "gsm8k", "arithmetic")


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model", help="a run folder (uses its model/ subfolder) or a local Hugging Face model folder")
    parser.add_argument(
        "--benchmarks",
        default=DEFAULT_BENCHMARKS,
        help=f"comma-separated names from {', '.join(EVAL_NAMES)} (default: the five TAMPO benchmarks)",
    )
    parser.add_argument(
        "--data",
        default=None,
        help="data root holding math_eval/ and gsm8k/ (default: the copy shipped in kelvin/data; $KELVIN_DATA)",
    )
    parser.add_argument("--k", type=int, default=1, help="samples per problem (avg@k, pass@j for j = 1, 2, 4 ... k)")
    parser.add_argument(
        "--temperature",
        default="0.6",
        help="sampling temperature, or a comma list for a sweep; 0 = greedy; 'learned' = the model's temperature head",
    )
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1.0 = off)")
    parser.add_argument("--top-k", type=int, default=0, help="top-k sampling (0 = off)")
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="most tokens generated per completion")
    parser.add_argument("--max-prompt-length", type=int, default=0, help="left-truncate longer prompts (0 = never)")
    parser.add_argument("--limit", type=int, default=0, help="first N problems of each benchmark (0 = all)")
    parser.add_argument("--batch-size", type=int, default=64, help="sequences sampled together")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (the same for every setting: paired)")
    parser.add_argument(
        "--engine",
        default="kelvin",
        choices=["kelvin", "vllm"],
        help="who samples: Kelvin's sampler, or vLLM (fixed temperatures only; `pip install kelvin[vllm]`)",
    )
    parser.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu' or 'cuda'")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="weights' dtype")
    parser.add_argument("--system-prompt", default=None, help="system message for chat-template prompts")
    parser.add_argument("--no-chat-template", action="store_true", help="feed prompts raw even if a template exists")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per answer check (math-verify)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    parser.add_argument("--save-completions", action="store_true", help="include every completion in the JSON")
    return parser


def resolve_model_folder(model: str | Path) -> Path:
    """A run folder's `model/` subfolder, or the folder itself when it holds config.json."""
    folder = Path(model)
    if (folder / "model" / "config.json").is_file():
        return folder / "model"
    if (folder / "config.json").is_file():
        return folder
    raise FileNotFoundError(
        f"MODEL={str(model)!r} is neither a run folder (with model/config.json) nor a Hugging Face model folder "
        "(with config.json). Pass a `kelvin train` output folder or a folder written by save_pretrained "
        "(`kelvin models install smollm2-135m-instruct DEST` makes one)."
    )


LEARNED = "learned"


def parse_temperatures(text: str) -> tuple[bool, list[float]]:
    """(learned, fixed temperatures) from '0.6', '0.6,1.0', 'learned' or 'learned,0.6'."""
    from kelvin.config import TEMPERATURE_MAX, TEMPERATURE_MIN

    items = [x.strip() for x in text.split(",") if x.strip()]
    learned = LEARNED in items
    try:
        values = [float(x) for x in items if x != LEARNED]
    except ValueError:
        raise ValueError(
            f"--temperature={text!r} must be a number, '{LEARNED}', or a comma list like 0.6,1.0 or {LEARNED},0.6."
        ) from None
    if not (values or learned) or any(not (v == 0 or TEMPERATURE_MIN <= v <= TEMPERATURE_MAX) for v in values):
        raise ValueError(
            f"--temperature={text!r} needs temperatures in [{TEMPERATURE_MIN:g}, {TEMPERATURE_MAX:g}], 0 for greedy "
            f"(the same bounds as sampling.temperature: smaller values overflow float32 logits), or '{LEARNED}'."
        )
    return learned, values


def load_learned(folder: Path, seed: int) -> TemperatureController:
    """The controller whose learned temperature is saved beside the model (`--temperature learned`)."""
    from kelvin.controllers import load_learned_controller

    controller = load_learned_controller(folder, seed=seed)
    if controller is None:
        raise ValueError(
            f"--temperature {LEARNED}: {folder} has no temperature head saved beside the model; only a model saved "
            "by an IntroLLM run (controller.name=introspective) has one. Pass a fixed temperature such as 0.6 instead."
        )
    return controller


def check_sampling_options(args: argparse.Namespace) -> None:
    """The checks the config applies to sampling, for `kelvin eval` and `kelvin generate` options (ValueError)."""
    checks = [
        ("top_p", "--top-p", lambda v: 0 < v <= 1 and math.isfinite(v), "in (0, 1]; 1.0 disables nucleus sampling"),
        ("top_k", "--top-k", lambda v: v >= 0, ">= 0; 0 disables top-k"),
        ("max_new_tokens", "--max-new-tokens", lambda v: v >= 1, ">= 1"),
        ("limit", "--limit", lambda v: v >= 0, ">= 0; 0 evaluates every problem"),
        ("batch_size", "--batch-size", lambda v: v >= 1, ">= 1"),
        ("k", "--k", lambda v: v >= 1, ">= 1"),
        ("max_prompt_length", "--max-prompt-length", lambda v: v >= 0, ">= 0; 0 never truncates"),
        ("timeout", "--timeout", lambda v: v > 0 and math.isfinite(v), "a positive number of seconds"),
    ]
    for attribute, option, ok, rule in checks:
        value = getattr(args, attribute, None)
        if value is not None and not ok(value):
            raise ValueError(f"{option}={value} must be {rule}.")
    temperature = getattr(args, "temperature", None)
    if isinstance(temperature, (float, str)):
        parse_temperatures(str(temperature))


def build_eval_tasks(names: list[str], data: str | None, limit: int, timeout_s: float) -> list[Task]:
    from kelvin.tasks.arithmetic import arithmetic_task
    from kelvin.tasks.benchmarks import benchmark_task

    tasks = []
    for name in names:
        if name not in EVAL_NAMES:
            raise ValueError(f"--benchmarks: {name!r} is unknown; choose from {', '.join(EVAL_NAMES)}.")
        if name == "arithmetic":
            tasks.append(arithmetic_task(eval_size=limit or 256))
        else:
            tasks.append(benchmark_task(name, data, timeout_s=timeout_s))
    return tasks


def print_report(report: EvalReport, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    results = report.results
    metric_names = list(dict.fromkeys(name for r in results for name in r.metrics()))
    table = Table(
        title=title,
        caption="scores in %; tokens: mean completion length; trunc: hit max_new_tokens; "
        "fail: answer checks that raised or ran over --timeout",
    )
    for column in ("benchmark", "setting", "n", *metric_names, "tokens", "trunc", "fail"):
        table.add_column(column, justify="left" if column in ("benchmark", "setting") else "right", no_wrap=True)
    for r in results:
        metrics = r.metrics()
        table.add_row(
            r.name,
            r.setting,
            str(r.num_examples),
            *(f"{100 * metrics[m]:.1f}" if m in metrics else "-" for m in metric_names),
            f"{r.mean_completion_tokens:.0f}",
            f"{100 * r.truncated_fraction:.0f}%",
            str(r.verify_failures + r.verify_timeouts),
        )
    if len({r.name for r in results}) > 1:
        for setting, averages in report.averages.items():
            table.add_row(
                "average", setting, "", *(f"{100 * averages[m]:.1f}" if m in averages else "-" for m in metric_names)
            )
    console = Console()
    if not console.is_terminal:  # rich assumes 80 columns when piped; the table is wider
        console = Console(width=160)
    console.print(table)


def start_eval_engine(args: argparse.Namespace, model: Any, tokenizer: Any, folder: Path) -> Any:
    """A vLLM engine serving the model folder as it is (no weights to push), its KV cache sized for one batch."""
    from kelvin.models.loading import eos_ids
    from kelvin.rl.sampling import SamplingSettings
    from kelvin.rl.vllm_engine import VLLMEngine, VLLMOptions

    positions = int(getattr(model.config, "max_position_embeddings", 0) or 4096)
    prompt = args.max_prompt_length or 512
    settings = SamplingSettings(args.max_new_tokens, eos_ids(model, tokenizer), int(tokenizer.pad_token_id or 0))
    options = VLLMOptions(
        model_folder=folder,
        dtype=args.dtype,
        max_model_length=positions,
        seed=args.seed,
        kv_cache_tokens=max(positions, args.batch_size * min(positions, prompt + args.max_new_tokens)),
    )
    return VLLMEngine(model, settings, options, policy_in_folder=True)


def run_eval(args: argparse.Namespace) -> int:
    """Load the model, evaluate every benchmark at every temperature, print a table, write JSON. Returns 0, or 2
    (with the reason on stderr) for bad arguments."""

    from kelvin.eval.evaluation import EvalReport, EvalResult, average_by_setting, evaluate_suite
    from kelvin.models.loading import load_pretrained

    try:
        check_sampling_options(args)
        folder = resolve_model_folder(args.model)
        learned, temperatures = parse_temperatures(args.temperature)
        if learned and getattr(args, "engine", "kelvin") == "vllm":
            raise ValueError(
                "--temperature learned with --engine vllm: the learned temperature is chosen per token, which vLLM "
                "cannot take; use --engine kelvin for it (fixed temperatures can use either engine)."
            )
        controller = load_learned(folder, args.seed) if learned else None
        names = [n.strip() for n in args.benchmarks.split(",") if n.strip()]
        tasks = build_eval_tasks(names, args.data, args.limit, args.timeout)
    except (ValueError, FileNotFoundError) as err:
        print(f"kelvin eval: error: {err}", file=sys.stderr)
        return 2
    from kelvin.models.setup import resolve_device, torch_dtype

    model, tokenizer = load_pretrained(folder, dtype=torch_dtype(args.dtype))
    model.to(resolve_device(args.device))
    engine = start_eval_engine(args, model, tokenizer, folder) if args.engine == "vllm" else None

    def progress(result: EvalResult) -> None:
        scores = ", ".join(f"{name} {100 * value:.1f}" for name, value in result.metrics().items())
        print(
            f"{result.name} [{result.setting}] n={result.num_examples}: {scores} ({result.seconds:.0f} s)",
            file=sys.stderr,
        )

    options = dict(
        limit=args.limit or None,
        on_result=progress,
        k=args.k,
        top_p=args.top_p,
        top_k=args.top_k,
        max_new_tokens=args.max_new_tokens,
        max_prompt_length=args.max_prompt_length or None,
        batch_size=args.batch_size,
        seed=args.seed,
        system_prompt=args.system_prompt,
        use_chat_template=not args.no_chat_template,
        timeout_s=args.timeout,
        keep_completions=args.save_completions,
        engine=engine,
    )
    results: list[EvalResult] = []
    if controller is not None:
        for module in controller.modules():
            module.to(next(model.parameters()).device)
        results += evaluate_suite(model, tokenizer, tasks, controller=controller, **options).results
    if temperatures:
        results += evaluate_suite(model, tokenizer, tasks, temperatures=temperatures, **options).results
    report = EvalReport(results, average_by_setting(results))
    print_report(report, f"{folder} (k={args.k}, top_p={args.top_p}, max_new_tokens={args.max_new_tokens})")
    if args.output:
        payload = {"model": str(folder), "settings": {k: v for k, v in vars(args).items() if k != "func"}}
        payload.update(report.to_dict())
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(payload, indent=1))
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_eval_arguments(argparse.ArgumentParser(prog="kelvin eval", description=__doc__))
    return run_eval(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
