"""What TAMPO costs over a fixed-temperature GRPO step: step time and peak memory, measured side by side in one run.

    python bench/overhead.py            # both models, a table of ratios (about 2 minutes on 2 cores)
    python bench/overhead.py --json     # the same, as one JSON object (tampo_step_time_ratio, tampo_peak_memory_ratio,
                                        # introspective_step_time_ratio, ...)

Arms (`ARMS`): `fixed` is the baseline; every other arm is compared with it and reported as
`<arm>_step_time_ratio` / `<arm>_peak_memory_ratio` (the worst over the models). Adding an arm is one `Arm(...)`
line, e.g. `Arm("introspective", ["controller.name=introspective"], replays_temperatures=False)` for IntroLLM.

Models: `tiny`, the ~10M tiny Llama with the character vocabulary (87 tokens), and `large-vocab`, the same body
with SmolLM2's vocabulary size (49,152), where the K candidate log-sum-exps over the vocabulary are heaviest.
Both are randomly initialised and saved to a temporary folder; nothing is downloaded.

Same batch: every arm is a full `Trainer.train_step()` (sampling, rewards, the policy pass that also fills the
controller's scores, backward and optimizer step, `controller.update`). The TAMPO arm runs in warm-up mode (uniform
draws, which do not depend on the data) while its meta-update still runs every step, so the fixed arm can replay the
very temperatures TAMPO draws: both sample identical rollouts from identical weights (checked every step), and the
only difference left is TAMPO's own work.

Time: one process holds one trainer per arm. Each repeat runs one step of every arm, in the order A B, then B A,
and so on; `<arm>_step_time_ratio` is the median over repeats of (arm step / fixed step), so slow drifts of a shared
machine cancel within each pair. Step time is the process's CPU time with one torch thread (`--threads`, default 1):
on a machine shared with other jobs, wall-clock time mostly measures the neighbours (and several threads on busy
cores stall each other); the wall-clock ratio is printed beside it. A difference of two noisy step times resolves
a few percent at best, so the arm's own extra work (its `own_work` functions and its `controller.update`, timed
inside the same steps) is also reported: `<arm>_attributed_time_ratio` = 1 + own work / fixed step.

Memory: CPU tensors bypass Python's allocator (so tracemalloc sees nothing) and torch has no CPU peak counter, so
each arm runs in its own subprocess and, per model: builds the trainer, runs one warm-up step (allocates the
optimizer state), resets the kernel's peak-RSS mark (`/proc/self/clear_refs` = 5, Linux), runs one measured step and
reads VmHWM. Large blocks are mmapped (MALLOC_MMAP_THRESHOLD_=65536) so that RSS follows the live tensors rather than
glibc's heap reuse. Reported: the ratio of peak RSS (the whole process: runtime, weights, optimizer state, the step's
transients) and, stricter, the ratio of the step's rise above the RSS it started from (the transients alone).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from kelvin.config import load_config  # noqa: E402
from kelvin.controllers.fixed import FixedController  # noqa: E402
from kelvin.controllers.tampo import TAMPOController  # noqa: E402
from kelvin.models.loading import CHAR_VOCAB, build_char_tokenizer, build_tiny_model, save_pretrained  # noqa: E402
from kelvin.rl.trainer import Trainer  # noqa: E402

BASELINE = "fixed"
TAMPO_OVERRIDES = ["controller.name=tampo", "controller.tampo.warmup_steps=1000000"]


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: list[str]
    replays_temperatures: bool = True  # batch-level arms sample at TAMPO's draws, so every arm sees the same batch
    own_work: tuple[str, ...] = ()  # "module:function" of the arm's extra work (its controller.update is added)


ARMS = [
    Arm(BASELINE, ["controller.name=fixed"]),
    Arm("tampo", TAMPO_OVERRIDES, own_work=("kelvin.controllers.tampo:virtual_temperature_loglik",)),
    # IntroLLM updating both policies every step (joint), its dearest step; bench/overhead_introspective.py breaks
    # it into theta, phi and joint steps.
    Arm(
        "introspective",
        ["controller.name=introspective", "controller.introspective.joint=true"],
        replays_temperatures=False,
        own_work=("kelvin.controllers.introspective:sample_action", "kelvin.controllers.introspective:action_log_prob"),
    ),
]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    size: str  # a kelvin.models.loading.TINY_SIZES body
    vocab_size: int
    prompts: int  # prompts per step (x generations = rollout batch, one micro-batch)
    generations: int
    completion_length: int
    repeats: int


MODELS = {
    "tiny": ModelSpec("tiny", "10m", len(CHAR_VOCAB) + 3, prompts=2, generations=4, completion_length=16, repeats=6),
    "large-vocab": ModelSpec("large-vocab", "10m", 49152, prompts=2, generations=4, completion_length=16, repeats=5),
}


# --------------------------------------------------------------------------------------------------------------------
# Set-up
# --------------------------------------------------------------------------------------------------------------------


def wide_tokenizer(vocab_size: int):
    """The character tokenizer grown to `vocab_size` tokens (extra Unicode characters), so every id decodes."""
    extra = vocab_size - (len(CHAR_VOCAB) + 3)
    return build_char_tokenizer(CHAR_VOCAB + "".join(chr(0x100 + i) for i in range(max(extra, 0))))


def write_model(spec: ModelSpec, folder: Path) -> Path:
    tokenizer = wide_tokenizer(spec.vocab_size)
    model = build_tiny_model(spec.size, vocab_size=len(tokenizer), seed=0)
    save_pretrained(model, tokenizer, folder)
    return folder


def build_trainer(spec: ModelSpec, arm: Arm, model_dir: Path, output_dir: Path) -> Trainer:
    config = load_config(
        overrides=[
            f"model.path={model_dir}",
            f"trainer.prompts_per_step={spec.prompts}",
            f"sampling.num_generations={spec.generations}",
            f"sampling.max_completion_length={spec.completion_length}",
            f"trainer.micro_batch_size={spec.prompts * spec.generations}",
            "trainer.log_completions=0",
            "trainer.tensorboard=false",
            f"trainer.steps={10**6}",
            *arm.overrides,
        ]
    )
    trainer = Trainer(config, output_dir / arm.name, quiet=True)
    if arm.replays_temperatures and arm.name != "tampo":
        tampo_config = load_config(overrides=TAMPO_OVERRIDES).controller.tampo
        trainer.controller = ReplayTampoDraws(TAMPOController(tampo_config))
    return trainer


class ReplayTampoDraws(FixedController):
    """A fixed temperature per step, equal to the one a TAMPO controller in warm-up draws at that step."""

    def __init__(self, shadow: TAMPOController) -> None:
        super().__init__(1.0)
        self.shadow = shadow

    def begin_step(self, step: int) -> None:
        self.shadow.begin_step(step)
        self.temperature = self.shadow.batch_temperature()


# --------------------------------------------------------------------------------------------------------------------
# Time: all arms in this process, interleaved
# --------------------------------------------------------------------------------------------------------------------


def batch_fingerprint(metrics: dict[str, float]) -> tuple[float, ...]:
    return tuple(round(metrics[k], 6) for k in ("temperature/mean", "completion_length", "reward"))


class OwnWorkClock:
    """CPU seconds spent inside the wrapped callables (an arm's own extra work)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - start

        return timed


@contextlib.contextmanager
def clocked_own_work(arm: Arm, trainer: Trainer) -> Iterator[OwnWorkClock]:
    """Time the arm's `own_work` functions and its controller's update while the block runs."""
    clock = OwnWorkClock()
    patched = []
    for target in arm.own_work:
        module_name, _, attribute = target.partition(":")
        module = importlib.import_module(module_name)
        original = getattr(module, attribute)
        setattr(module, attribute, clock.wrap(original))
        patched.append((module, attribute, original))
    trainer.controller.update = clock.wrap(trainer.controller.update)  # type: ignore[method-assign]
    try:
        yield clock
    finally:
        del trainer.controller.update  # back to the class's method
        for module, attribute, original in patched:
            setattr(module, attribute, original)


def time_arms(spec: ModelSpec, model_dir: Path, work: Path) -> dict[str, Any]:
    trainers = {arm.name: build_trainer(spec, arm, model_dir, work) for arm in ARMS}
    for trainer in trainers.values():
        trainer.train_step()  # warm-up: allocator, optimizer state, first-call overheads
    cpu: dict[str, list[float]] = {arm.name: [] for arm in ARMS}
    wall: dict[str, list[float]] = {arm.name: [] for arm in ARMS}
    own: dict[str, list[float]] = {arm.name: [] for arm in ARMS}
    same_batch = True
    for repeat in range(spec.repeats):
        order = ARMS if repeat % 2 == 0 else ARMS[::-1]  # A B, B A, ...: a linear drift cancels in the pairs
        fingerprints = {}
        for arm in order:
            trainer = trainers[arm.name]
            with clocked_own_work(arm, trainer) as clock:
                cpu_start, wall_start = time.process_time(), time.perf_counter()
                metrics = trainer.train_step()
                cpu[arm.name].append(time.process_time() - cpu_start)
                wall[arm.name].append(time.perf_counter() - wall_start)
            own[arm.name].append(clock.seconds)
            if arm.replays_temperatures:
                fingerprints[arm.name] = batch_fingerprint(metrics)
        same_batch &= len(set(fingerprints.values())) == 1
    out: dict[str, Any] = {"same_batch": same_batch, "cpu_seconds": cpu, "wall_seconds": wall, "own_seconds": own}
    baseline_step = statistics.median(cpu[BASELINE])
    for arm in ARMS[1:]:
        pairs = [a / b for a, b in zip(cpu[arm.name], cpu[BASELINE])]
        out[f"{arm.name}_step_time_ratio"] = statistics.median(pairs)
        out[f"{arm.name}_step_time_ratio_range"] = [min(pairs), max(pairs)]
        out[f"{arm.name}_wall_time_ratio"] = statistics.median([a / b for a, b in zip(wall[arm.name], wall[BASELINE])])
        out[f"{arm.name}_attributed_time_ratio"] = 1 + statistics.median(own[arm.name]) / baseline_step
    return out


# --------------------------------------------------------------------------------------------------------------------
# Memory: one subprocess per arm
# --------------------------------------------------------------------------------------------------------------------


def resident_mib() -> dict[str, float]:
    values = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def memory_probe(arm: Arm, model_dirs: dict[str, Path]) -> dict[str, dict[str, float]]:
    """In a fresh process: for each model, the peak RSS of one measured step after a warm-up step."""
    out = {}
    for name, model_dir in model_dirs.items():
        with tempfile.TemporaryDirectory() as work:
            trainer = build_trainer(MODELS[name], arm, model_dir, Path(work))
            trainer.train_step()
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux)
            before = resident_mib()["VmRSS"]
            trainer.train_step()
            peak = resident_mib()["VmHWM"]
            out[name] = {"peak_mib": peak, "rise_mib": peak - before}
            del trainer
            gc.collect()
    return out


def measure_memory(model_dirs: dict[str, Path]) -> dict[str, dict[str, dict[str, float]]]:
    """{arm: {model: {peak_mib, rise_mib}}}, one subprocess per arm."""
    # Blocks above 64 KiB are mmapped and go back to the kernel when freed, so RSS follows the live tensors; with
    # glibc's default adaptive threshold, heap reuse moves the peak of identical runs by tens of MiB.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "TOKENIZERS_PARALLELISM": "false"}
    found = {}
    for arm in ARMS:
        command = [sys.executable, __file__, "--probe", arm.name, "--threads", str(torch.get_num_threads())]
        command += [f"{name}={path}" for name, path in model_dirs.items()]
        result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=REPO, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"memory probe of arm {arm.name} failed:\n{result.stderr[-3000:]}")
        found[arm.name] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def memory_ratios(probes: dict[str, dict[str, float]]) -> dict[str, float]:
    base = probes[BASELINE]
    out = {}
    for arm in ARMS[1:]:
        out[f"{arm.name}_peak_memory_ratio"] = probes[arm.name]["peak_mib"] / base["peak_mib"]
        out[f"{arm.name}_step_memory_rise_ratio"] = probes[arm.name]["rise_mib"] / max(base["rise_mib"], 1e-9)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------------


def run(models: list[str]) -> dict[str, Any]:
    report: dict[str, Any] = {"models": {}, "torch_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        model_dirs = {name: write_model(MODELS[name], Path(tmp) / f"model-{name}") for name in models}
        for name in models:
            spec = MODELS[name]
            result = {"vocab_size": spec.vocab_size, "rows": spec.prompts * spec.generations}
            result.update(time_arms(spec, model_dirs[name], Path(tmp) / f"runs-{name}"))
            report["models"][name] = result
        probes = measure_memory(model_dirs)
    for name, result in report["models"].items():
        result["memory_mib"] = {arm.name: probes[arm.name][name] for arm in ARMS}
        result.update(memory_ratios(result["memory_mib"]))
    for arm in ARMS[1:]:
        for key in (
            f"{arm.name}_step_time_ratio",
            f"{arm.name}_attributed_time_ratio",
            f"{arm.name}_peak_memory_ratio",
        ):
            report[key] = max(r[key] for r in report["models"].values())  # the worst model
    return report


def print_table(report: dict[str, Any]) -> None:
    print(f"torch threads: {report['torch_threads']}; ratios are arm / {BASELINE} (goal: time <= 1.03, memory <= 1.10)")
    for name, r in report["models"].items():
        print(
            f"\n{name}: vocab {r['vocab_size']}, {r['rows']} rollouts per step, {len(r['cpu_seconds'][BASELINE])} "
            f"repeats, same batch in every arm: {r['same_batch']}"
        )
        for arm in ARMS:
            mem = r["memory_mib"][arm.name]
            print(
                f"  {arm.name:>14}: step {statistics.median(r['cpu_seconds'][arm.name]):6.3f} s CPU "
                f"(own work {statistics.median(r['own_seconds'][arm.name]):6.3f} s)   "
                f"peak RSS {mem['peak_mib']:7.1f} MiB   step rise {mem['rise_mib']:6.1f} MiB"
            )
        for arm in ARMS[1:]:
            low, high = r[f"{arm.name}_step_time_ratio_range"]
            print(
                f"  {arm.name:>14} / {BASELINE}: time x{r[f'{arm.name}_step_time_ratio']:.3f} "
                f"(repeats {low:.3f}-{high:.3f}; wall x{r[f'{arm.name}_wall_time_ratio']:.3f}; "
                f"attributed x{r[f'{arm.name}_attributed_time_ratio']:.4f})   "
                f"peak memory x{r[f'{arm.name}_peak_memory_ratio']:.3f} "
                f"(step rise x{r[f'{arm.name}_step_memory_rise_ratio']:.3f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (CPU time is measured per process)")
    parser.add_argument("--probe", metavar="ARM", help=argparse.SUPPRESS)  # internal: memory of one arm
    parser.add_argument("model_dirs", nargs="*", help=argparse.SUPPRESS)  # internal: name=folder for --probe
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    if args.probe:
        arm = next(a for a in ARMS if a.name == args.probe)
        dirs = {name: Path(path) for name, path in (item.split("=", 1) for item in args.model_dirs)}
        print(json.dumps(memory_probe(arm, dirs)))
        return
    report = run(args.models)
    if args.json:
        print(json.dumps(report))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
