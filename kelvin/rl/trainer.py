"""The GRPO training loop, readable top to bottom.

    for each step:
        controller.begin_step(step)
        record  = sample_and_reward()       # prompts -> engine -> Rollouts (tau recorded per token) -> rewards -> A
                  (dynamic sampling: more rounds until the batch holds enough informative groups)
        update  = update_policy(record)     # pass 1: old log-probs + controller scores + gradient; passes 2+
        controller.update(rollouts, advantages, scores)
        log, evaluate, checkpoint           # RunLog, kelvin.eval, kelvin.rl.checkpoint

accelerate places the model and runs data-parallel training across processes (`trainer.num_processes`, started by
kelvin.rl.launch): each process samples its own slice of the prompts (whole groups), gradients are averaged by DDP
(or reduce-scattered by FSDP2, kelvin.rl.sharding), and metrics are reduced across processes.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from kelvin.config import KelvinConfig, to_dict
from kelvin.controllers import build_controller
from kelvin.controllers.base import Scores, ScoringRequest, TemperatureController
from kelvin.eval.evaluation import held_out_accuracy
from kelvin.models.loading import count_parameters, eos_ids
from kelvin.models.setup import load_training_models, resolve_device, save_trained_model
from kelvin.rewards.functions import Rewarder, completion_id_lists
from kelvin.rl.checkpoint import load_latest_checkpoint, rng_state, save_checkpoint, set_rng_state
from kelvin.rl.distributed import check_launch
from kelvin.rl.dynamic_sampling import fill_with_informative_groups
from kelvin.rl.engine import build_engine
from kelvin.rl.grpo import LossInputs, LossSettings, LossStats, group_advantages, grpo_loss
from kelvin.rl.guards import NonFiniteGuard
from kelvin.rl.optimizer import build_optimizer, optimizer_step
from kelvin.rl.policy_pass import PassOutput, assemble_scores, pad_to, policy_pass, reference_logprobs, trim
from kelvin.rl.resume import compare_resume_config
from kelvin.rl.rollouts import Rollouts
from kelvin.rl.run_folder import restart_without_checkpoint
from kelvin.rl.run_log import RunLog
from kelvin.rl.sampler_correction import SamplerCorrection, logprob_gap_metrics
from kelvin.rl.sampling import SamplingSettings
from kelvin.rl.sharding import full_model_state, full_optimizer_state, full_parameters, is_sharded, plain_copy, shard
from kelvin.rl.step_metrics import step_metrics
from kelvin.rl.step_record import StepRecord
from kelvin.tasks import build_task
from kelvin.tasks.base import Example
from kelvin.tasks.prompts import encode_prompts

__all__ = ["StepRecord", "Trainer"]

OnStep = Callable[[dict[str, float]], None]  # called with each step's logged metrics, after its checkpoint


class Trainer:
    def __init__(self, config: KelvinConfig, output_dir: str | Path, quiet: bool = False) -> None:
        self.config = config
        self.output_dir = Path(output_dir)
        self.quiet = quiet
        t = config.trainer
        if t.torch_threads:
            torch.set_num_threads(t.torch_threads)
        self.accelerator = Accelerator(cpu=resolve_device(t.device).type == "cpu")
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        check_launch(config, self.world)
        self.local_prompts = t.prompts_per_step // self.world
        self.device = self.accelerator.device
        random.seed(t.seed)
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)

        models = load_training_models(config, self.device, quiet=quiet or not self.is_main)
        self.tokenizer, self.reference = models.tokenizer, models.reference
        policy = models.policy.to(self.device)
        self.model = shard(policy) if t.sharding == "fsdp2" else self.accelerator.prepare(policy)
        self.policy = self.accelerator.unwrap_model(self.model)
        hidden = getattr(self.policy.config, "hidden_size", None)  # a transformers config, not a controller
        self.controller: TemperatureController = build_controller(config, hidden_size=hidden)
        for module in self.controller.modules():
            module.to(self.device)
        # The lr schedule runs over the policy updates this run will take (IntroLLM's phi steps take none), so every
        # controller's run ends at the schedule's end.
        self.total_optimizer_steps = self.controller.policy_update_steps(t.steps) * config.loss.num_iterations
        self.optimizer = build_optimizer(self.model, config.optim, self.total_optimizer_steps)
        self.task = build_task(config)
        self.rewarder = Rewarder(self.task, config.reward.functions, config.reward.weights, config.reward.timeout_s)
        self.sampling = SamplingSettings(
            max_new_tokens=config.sampling.max_completion_length,
            eos_ids=eos_ids(self.policy, self.tokenizer),
            pad_id=int(self.tokenizer.pad_token_id),
            top_p=config.sampling.top_p,
            top_k=config.sampling.top_k,
            cache=config.sampling.cache,
        )
        self.engine = build_engine(config, self.policy, self.sampling, self.controller, seed=t.seed)
        self.correction = SamplerCorrection.from_config(config.sampling)  # another engine's samples: IS weights
        self.generator = torch.Generator(device=self.device).manual_seed(t.seed * 1000 + self.rank)
        self.step = 0
        self.data_position = 0  # the next training prompt; advanced only by `take_prompts`
        self.optimizer_steps = 0
        self.guard = NonFiniteGuard(config.optim.max_nonfinite_grad_steps)
        self.log = RunLog(self.output_dir, enabled=self.is_main, log_completions=t.log_completions)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def initial_temperature(self) -> float:
        tau0 = self.controller.initial_temperature
        return float(tau0) if tau0 is not None else float(self.config.sampling.temperature)

    # ---------------------------------------------------------------------------------------------------------------
    # the loop

    def train(self, resume: bool = False, progress: bool = True, on_step: OnStep | None = None) -> dict[str, Any]:
        """Run the configured number of steps; returns a summary (accuracy before/after, paths).

        `on_step(metrics)` runs after every step, once its row is logged and its checkpoint (if any) written.
        """
        t = self.config.trainer
        self.output_dir.mkdir(parents=True, exist_ok=True)
        resumed = resume and self.resume()
        self.log.start(self.config, tensorboard=t.tensorboard)
        summary: dict[str, Any] = {
            "output_dir": str(self.output_dir),
            "resumed_from_step": self.step if resumed else 0,
            "parameters": count_parameters(self.policy),
            "num_processes": self.world,
            "skipped_rows": self.task.skipped_rows,  # rows of the task's data that could not be used
        }
        if not resumed:
            summary["accuracy_before"] = self.evaluate()
            skipped = float(self.task.skipped_rows)
            self.log.metrics(
                {
                    "step": 0,
                    "eval/accuracy": summary["accuracy_before"],
                    "data/skipped_rows": skipped,
                    "num_processes": self.world,
                }
            )
        with self.log.progress(progress and not self.quiet, total=t.steps, completed=self.step):
            while self.step < t.steps:
                metrics = self.train_step()
                if self.step == t.steps or (t.eval_every and self.step % t.eval_every == 0):
                    metrics["eval/accuracy"] = self.evaluate()
                if self.step == t.steps:
                    summary["accuracy_after"] = metrics["eval/accuracy"]
                self.log.metrics(metrics)
                self.log.advance(metrics)
                if (t.save_every and self.step % t.save_every == 0) or self.step == t.steps:
                    self.save()
                if on_step is not None:
                    on_step(metrics)
        summary["model_dir"] = str(self.save_final_model())
        self.log.finish(summary)
        return summary

    def train_step(self) -> dict[str, float]:
        """One step, stage by stage: sample -> reward -> advantages -> update -> controller update -> metrics."""
        t0 = time.perf_counter()
        self.controller.begin_step(self.step)
        record = self.sample_batch()
        t_sampled = time.perf_counter()
        update_metrics, scores = self.update_policy(record)
        t_updated = time.perf_counter()
        controller_metrics = self.controller.update(record.rollouts, record.advantages, scores)

        g = self.config.sampling.num_generations
        metrics = step_metrics(
            self.step + 1, record, scores, self.data_position, g, self.accelerator.gather, self._reduce_sum
        )
        if self.config.loss.dynamic_sampling:
            metrics["dynamic_sampling/rounds"] = float(record.sampling_rounds)
        metrics.update(update_metrics)
        metrics.update(self.controller.metrics())
        metrics.update(controller_metrics)
        metrics.update(self.guard.metrics())
        metrics["learning_rate"] = float(self.optimizer.param_groups[0]["lr"])  # of the last optimizer step
        metrics["optimizer_steps"] = float(self.optimizer_steps)  # policy-optimizer steps so far (equal budgets)
        metrics["time/sample_and_reward"] = t_sampled - t0
        metrics["time/update"] = t_updated - t_sampled
        metrics["time/step"] = time.perf_counter() - t0
        metrics["num_processes"] = self.world  # every row says how many processes trained it
        self.log.completions(self.step + 1, record)
        self.step += 1
        return metrics

    # ---------------------------------------------------------------------------------------------------------------
    # stages

    def take_prompts(self) -> tuple[list[Example], torch.Tensor, torch.Tensor]:
        """This process's next prompts, each repeated num_generations times (groups contiguous); advances the data."""
        g = self.config.sampling.num_generations
        first = self.data_position + self.rank * self.local_prompts
        self.data_position += self.config.trainer.prompts_per_step
        examples = [self.task.train(first + i) for i in range(self.local_prompts)]
        ids, mask = encode_prompts(
            self.tokenizer,
            [e.prompt for e in examples],
            use_chat_template=self.task.use_chat_template and self.config.task.chat_template,
            system_prompt=self.config.task.system_prompt,
            max_prompt_length=self.config.sampling.max_prompt_length,
        )
        ids = ids.repeat_interleave(g, dim=0).to(self.device)
        mask = mask.repeat_interleave(g, dim=0).to(self.device)
        return [e for e in examples for _ in range(g)], ids, mask

    def sample_batch(self) -> StepRecord:
        """The step's rollout batch: one round, or with dynamic sampling as many as fill it with informative groups."""
        record = self.sample_and_reward()
        if not self.config.loss.dynamic_sampling:
            return record
        return fill_with_informative_groups(
            record,
            sample_more=self.sample_and_reward,
            any_process_short=self._any_process,
            groups_wanted=self.local_prompts,
            num_generations=self.config.sampling.num_generations,
            max_rounds=self.config.loss.dynamic_sampling_max_rounds,
            pad_id=self.sampling.pad_id,
        )

    def sample_and_reward(self) -> StepRecord:
        """Sample the next prompts' groups through the engine, reward them, and compute group advantages."""
        examples, ids, mask = self.take_prompts()
        with full_parameters(self.policy):  # sharded training: one gather per rollout (kelvin.rl.sharding)
            rollouts = self.engine.generate(
                ids, mask, self.controller, self.step, self.generator, self.initial_temperature
            )
        g = self.config.sampling.num_generations
        rollouts.group_index = torch.arange(len(examples), device=self.device) // g
        pad = self.sampling.pad_id
        texts = self.tokenizer.batch_decode(
            rollouts.completion_ids * rollouts.completion_mask + pad * (1 - rollouts.completion_mask),
            skip_special_tokens=True,
        )
        ids = completion_id_lists(rollouts.completion_ids, rollouts.completion_mask)
        scored = self.rewarder(texts, examples, completion_ids=ids, step=self.step)
        rewards = scored.rewards.to(self.device)
        adv = group_advantages(rewards, g, self.config.loss.scale_rewards)
        if self.config.loss.scale_rewards == "batch" and self.world > 1:
            adv_all = group_advantages(self.accelerator.gather(rewards), g, "batch")
            rows = slice(self.rank * rewards.numel(), (self.rank + 1) * rewards.numel())
            adv.advantages, adv.std_is_zero = adv_all.advantages[rows], adv_all.std_is_zero[rows]
        return StepRecord(
            rollouts=rollouts,
            examples=examples,
            texts=texts,
            rewards=rewards,
            accuracy=scored.accuracy.to(self.device),
            advantages=adv.advantages,
            std_is_zero=adv.std_is_zero,
            per_function={k: v.to(self.device) for k, v in scored.per_function.items()},
            reward_failures=scored.failures,
            reward_timeouts=scored.timeouts,
        )

    def update_policy(self, record: StepRecord) -> tuple[dict[str, float], Scores]:
        """Pass 1 (old log-probs + controller scores + first gradient) and further passes; one optimizer step each."""
        r, lc = record.rollouts, self.config.loss
        mask = r.completion_mask.float()
        if lc.mask_truncated_completions:
            mask = mask * (~r.truncated).float().unsqueeze(1)
        mb = min(self.config.trainer.micro_batch_size, r.batch_size)
        chunks = [slice(i, i + mb) for i in range(0, r.batch_size, mb)]
        active = self.accelerator.reduce(mask.sum().detach().clone(), reduction="sum").item()
        settings = LossSettings.from_config(
            lc, self.config.sampling.max_completion_length, len(chunks), active, self.world
        )
        train_policy = self.controller.trains_policy(self.step)
        request: ScoringRequest = self.controller.scoring_request()
        width = r.completion_ids.shape[1]
        old_logprobs = torch.zeros_like(mask)
        ref_logprobs: list[torch.Tensor | None] = [None] * len(chunks)
        passes: list[PassOutput] = []
        total: LossStats | None = None
        grad_norm = float("nan")
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.model.autocast_bf16)
        iterations = lc.num_iterations if train_policy else 1
        # The update in train mode, so gradient checkpointing recomputes and dropout (LoRA's) drops: transformers
        # does neither in eval mode. Sampling and evaluation stay in eval mode.
        self.model.train(train_policy)
        for iteration in range(iterations):
            for index, chunk in enumerate(chunks):
                micro = trim(r.select(chunk))
                w = micro.completion_ids.shape[1]
                last = index == len(chunks) - 1
                sync = (
                    self.accelerator.no_sync(self.model)
                    if (train_policy and not last and self.world > 1)
                    else contextlib.nullcontext()
                )
                with sync, torch.set_grad_enabled(train_policy), autocast:
                    if iteration == 0:  # the old policy: log-probs, the controller's scores, the reference
                        out = policy_pass(self.model, micro, request, score=self.controller.score_micro_batch)
                        old_logprobs[chunk, :w] = out.logprobs.detach().float()
                        passes.append(out)
                        if lc.beta > 0:
                            ref_logprobs[index] = reference_logprobs(self.reference, self.policy, micro)
                    else:
                        out = policy_pass(self.model, micro, ScoringRequest())
                    if not train_policy:
                        continue
                    inputs = LossInputs(
                        logprobs=out.logprobs.float(),
                        old_logprobs=old_logprobs[chunk, :w],
                        advantages=record.advantages[chunk],
                        mask=mask[chunk, :w],
                        ref_logprobs=ref_logprobs[index],
                        entropy=out.entropy.float(),
                        sampler_weights=self._sampler_weights(old_logprobs[chunk, :w], micro),
                    )
                    loss, stats = grpo_loss(inputs, settings)
                    self.accelerator.backward(loss)
                total = (total or LossStats.zero()).combine(stats)
            if train_policy:
                grad_norm = self._optimizer_step()
        self.model.eval()
        scores = assemble_scores(passes, old_logprobs, width)
        metrics = {"grad_norm": grad_norm, "policy_updated": float(train_policy)}
        gather = self.accelerator.gather
        metrics.update(logprob_gap_metrics(old_logprobs, r.behaviour_logprobs, r.completion_mask, gather))
        if self.correction is not None:
            metrics.update(self.correction.metrics(old_logprobs, r.behaviour_logprobs, r.completion_mask, gather))
        if total is not None:
            summed = self._reduce_sum(torch.tensor(total.sums(), device=self.device, dtype=torch.float64)).tolist()
            metrics.update(total.metrics(summed, len(chunks) * iterations * self.world, with_kl=lc.beta > 0))
        if not train_policy:
            entropy = torch.cat([pad_to(p.entropy.detach(), width) for p in passes])
            metrics["entropy"] = float((entropy * mask).sum() / mask.sum().clamp(min=1))
        return metrics, scores

    def _sampler_weights(self, old_logprobs: torch.Tensor, micro: Rollouts) -> torch.Tensor | None:
        """Importance weights pi_trainer / pi_sampler of one micro-batch when another engine sampled it, else None."""
        if self.correction is None:
            return None
        return self.correction.weights(old_logprobs, micro.behaviour_logprobs, micro.completion_mask.float())

    def _optimizer_step(self) -> float:
        o, index, total = self.config.optim, self.optimizer_steps, self.total_optimizer_steps
        norm = optimizer_step(self.model, self.optimizer, o, index, total, allow=self.guard.allow)
        self.optimizer_steps += 1
        self.engine.policy_updated()
        return norm

    def _reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(x, reduction="sum")

    def _any_process(self, flag: bool) -> bool:
        """Whether `flag` holds on any process (every process calls this together)."""
        return float(self._reduce_sum(torch.tensor(float(flag), device=self.device))) > 0

    # ---------------------------------------------------------------------------------------------------------------
    # evaluation, checkpoints, the final model

    def evaluate(self, temperature: float | None = None) -> float:
        """Held-out accuracy, one sample per prompt at `trainer.eval_temperature` (0 = greedy), through kelvin.eval."""
        t = self.config.trainer.eval_temperature if temperature is None else temperature
        with full_parameters(self.policy):
            return held_out_accuracy(self.policy, self.tokenizer, self.task, self.config, t, self.step)

    def save(self) -> None:
        """Every process takes part: each writes its own streams (RNG, sampling generator, controller); rank 0 the
        weights, optimizer and shared state (kelvin.rl.checkpoint)."""
        shared = {
            "data_position": self.data_position,
            "optimizer_steps": self.optimizer_steps,
            "config": to_dict(self.config),
            "nonfinite_guard": self.guard.state_dict(),
        }
        own = {
            "rng": rng_state(),
            "generator": self.generator.get_state(),
            "controller": self.controller.state_dict(),
            "data_position": self.data_position,  # a copy per process, so agreement can be checked
        }
        model, optimizer = self.policy, self.optimizer
        if is_sharded(self.policy):  # gathered to rank 0; a collective, so every process calls it
            model, optimizer = full_model_state(self.policy), full_optimizer_state(self.policy, self.optimizer)
        save_checkpoint(
            self.output_dir / "checkpoints",
            self.step,
            model if self.is_main else None,
            optimizer if self.is_main else None,
            shared,
            self.config.trainer.keep_last,
            rank_state=own,
            rank=self.rank,
            num_processes=self.world,
        )

    def resume(self) -> bool:
        """Restore the newest complete checkpoint that loads (a broken newer one is named and skipped); refuse a
        config that changes the run; drop rows logged after it. Without a checkpoint, start cleanly."""
        loaded = load_latest_checkpoint(
            self.output_dir / "checkpoints", self.policy, self.optimizer, rank=self.rank, num_processes=self.world
        )
        if loaded is None:
            if self.is_main and restart_without_checkpoint(self.output_dir):
                print(f"kelvin: {self.output_dir} has no complete checkpoint: starting afresh", file=sys.stderr)
            return False
        _, state = loaded
        compare_resume_config(state["config"], to_dict(self.config), type(self.controller).uses_total_steps)
        self.guard.load_state_dict(state.get("nonfinite_guard", {}))
        self.step = state["step"]
        self.data_position = state["data_position"]
        self.optimizer_steps = state["optimizer_steps"]
        self.controller.load_state_dict(state["controller"])
        set_rng_state(state["rng"])
        self.generator.set_state(state["generator"])
        self.log.forget_after(self.step)
        return True

    def save_final_model(self) -> Path:
        folder = self.output_dir / "model"
        gathered = plain_copy(self.policy) if is_sharded(self.policy) else None  # a collective: every process
        if self.is_main:
            model = gathered if gathered is not None else self.policy
            save_trained_model(model, self.tokenizer, folder, lora=self.config.model.lora_r > 0)
            self.controller.save_pretrained(folder)  # its learned parts, beside the model
        return folder
