"""IntroLLM's step next to the fixed-temperature GRPO step: same model, same prompts, same lengths, one run.

    python bench/overhead_introspective.py [--size 10m] [--prompts 16] [--generations 8] [--new-tokens 48]
                                           [--repeats 3] [--json]

Each arm is the trainer's own step, phase by phase: `sample_in_chunks` with the arm's controller, the `Rewarder`,
`Trainer.update_policy` (old-policy pass, GRPO loss, backward, optimizer step) and `controller.update`. Arms:

    fixed       FixedController(1.0): the GRPO baseline
    joint       IntroLLM with controller.introspective.joint=true: head sampling + token update + head update
    theta       an IntroLLM theta step (head sampling + token update; the head only logs metrics)
    phi         an IntroLLM phi step (head sampling + no-grad old-policy pass with hidden states + head update)

`introspective_step_time_ratio` is joint / fixed: the dearest IntroLLM step, where every step pays for both updates
(goal <= 1.10). With the default alternation (one theta step, one phi step) the cost per step is the mean of theta
and phi, reported as `introspective_cycle_time_ratio`. EOS is disabled so every completion has the full length in
every arm; arms alternate within each repeat so background load affects all alike; medians are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from kelvin.config import load_config
from kelvin.controllers.base import TemperatureController, TokenContext, TokenTemperature
from kelvin.controllers.fixed import FixedController
from kelvin.controllers.introspective import IntrospectiveController, IntrospectiveControllerConfig
from kelvin.rl.sampling import sample_in_chunks
from kelvin.rl.trainer import StepRecord, Trainer

PHASES = ("sample", "reward", "update", "controller")


class TimedController:
    """Counts the seconds spent inside `token_temperature` (the per-token cost of the controller while sampling)."""

    def __init__(self, controller: TemperatureController) -> None:
        self.controller = controller
        self.seconds = 0.0
        self.original = controller.token_temperature

        def timed(ctx: TokenContext) -> TokenTemperature:
            start = time.perf_counter()
            out = self.original(ctx)
            self.seconds += time.perf_counter() - start
            return out

        controller.token_temperature = timed


def arm_controllers(hidden_size: int) -> dict[str, TemperatureController]:
    base = IntrospectiveControllerConfig()
    return {
        "fixed": FixedController(1.0),
        "joint": IntrospectiveController(dataclasses.replace(base, joint=True), hidden_size),
        "theta": IntrospectiveController(dataclasses.replace(base, theta_steps=1, phi_steps=0), hidden_size),
        "phi": IntrospectiveController(dataclasses.replace(base, theta_steps=0, phi_steps=1), hidden_size),
    }


def timed_step(trainer: Trainer, controller: TemperatureController) -> dict[str, float]:
    """One training step of `controller`'s arm on the trainer's fixed prompt batch; seconds per phase."""
    trainer.controller = controller
    timer = TimedController(controller)
    controller.begin_step(trainer.step)
    examples, ids, mask = trainer.take_prompts()
    t0 = time.perf_counter()
    rollouts = sample_in_chunks(
        trainer.policy,
        ids,
        mask,
        controller,
        trainer.sampling,
        0,
        generator=trainer.generator,
        initial_temperature=trainer.initial_temperature,
    )
    t1 = time.perf_counter()
    texts = trainer.tokenizer.batch_decode(rollouts.completion_ids, skip_special_tokens=True)
    scored = trainer.rewarder(texts, examples)
    t2 = time.perf_counter()
    n = rollouts.batch_size
    advantages = torch.randn(n, generator=torch.Generator().manual_seed(trainer.step))
    record = StepRecord(
        rollouts=rollouts,
        examples=examples,
        texts=texts,
        rewards=scored.rewards,
        accuracy=scored.accuracy,
        advantages=advantages,
        std_is_zero=torch.zeros(n, dtype=torch.bool),
    )
    _, scores = trainer.update_policy(record)
    t3 = time.perf_counter()
    controller.update(rollouts, advantages, scores)
    t4 = time.perf_counter()
    controller.token_temperature = timer.original
    return {**dict(zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3))), "token_temperature": timer.seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="10m", help="tiny model size (randomly initialised)")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--micro-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    config = load_config(
        None,
        [
            f"model.tiny={args.size}",
            f"trainer.prompts_per_step={args.prompts}",
            f"sampling.num_generations={args.generations}",
            f"sampling.max_completion_length={args.new_tokens}",
            f"trainer.micro_batch_size={args.micro_batch}",
            "trainer.tensorboard=false",
            "trainer.log_completions=0",
        ],
    )
    trainer = Trainer(config, tempfile.mkdtemp(prefix="kelvin-bench-"), quiet=True)
    trainer.sampling.eos_ids = []  # full-length completions in every arm: the same work to compare
    controllers = arm_controllers(int(trainer.policy.config.hidden_size))
    for controller in controllers.values():
        for module in controller.modules():
            module.to(trainer.device)
    times: dict[str, list[dict[str, float]]] = {name: [] for name in controllers}
    names = list(controllers)
    for repeat in range(args.repeats + 1):
        order = names[repeat % len(names) :] + names[: repeat % len(names)]  # rotate: no arm always runs first
        for name in order:
            phases = timed_step(trainer, controllers[name])
            if repeat > 0:  # the first round warms up every arm
                times[name].append(phases)

    median = {
        name: {phase: statistics.median(t[phase] for t in runs) for phase in (*PHASES, "token_temperature")}
        for name, runs in times.items()
    }
    step = {name: sum(phases[p] for p in PHASES) for name, phases in median.items()}
    # The work IntroLLM adds, timed inside the same steps (less exposed to background load than whole steps):
    # the head's per-token sampling beyond the fixed controller's, and the head update.
    added = median["joint"]["token_temperature"] - median["fixed"]["token_temperature"] + median["joint"]["controller"]
    result = {
        "model": args.size,
        "batch": args.prompts * args.generations,
        "new_tokens": args.new_tokens,
        "threads": torch.get_num_threads(),
        **{f"{name}_step_s": value for name, value in step.items()},
        **{f"{name}_{phase}_s": median[name][phase] for name in median for phase in PHASES},
        "introspective_step_time_ratio": step["joint"] / step["fixed"],
        "introspective_theta_step_time_ratio": step["theta"] / step["fixed"],
        "introspective_phi_step_time_ratio": step["phi"] / step["fixed"],
        "introspective_cycle_time_ratio": (step["theta"] + step["phi"]) / (2 * step["fixed"]),
        "introspective_sample_time_ratio": median["joint"]["sample"] / median["fixed"]["sample"],
        "introspective_added_work_ratio": (step["fixed"] + added) / step["fixed"],
        **{f"{name}_token_temperature_s": median[name]["token_temperature"] for name in median},
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"IntroLLM vs fixed step, {args.size} model, {result['batch']} completions x {args.new_tokens} tokens, "
        f"{result['threads']} threads, median of {args.repeats}"
    )
    print(f"  {'arm':8s}" + "".join(f"{p:>12s}" for p in PHASES) + f"{'step':>10s}{'/ fixed':>9s}")
    for name in controllers:
        cells = "".join(f"{median[name][p]:11.3f}s" for p in PHASES)
        print(f"  {name:8s}{cells}{step[name]:9.3f}s{step[name] / step['fixed']:8.2f}x")
    print(
        f"  introspective_step_time_ratio (joint / fixed) = {result['introspective_step_time_ratio']:.3f} "
        f"(goal <= 1.10); alternating theta/phi cycle = {result['introspective_cycle_time_ratio']:.3f}"
    )
    print(
        f"  work IntroLLM adds, timed inside the steps: head sampling "
        f"{median['joint']['token_temperature'] - median['fixed']['token_temperature']:.3f}s + head update "
        f"{median['joint']['controller']:.3f}s = {result['introspective_added_work_ratio']:.3f}x the fixed step"
    )


if __name__ == "__main__":
    main()
