"""The GRPO training loop, readable top to bottom.

    for each step:
        controller.begin_step(step)
        rollouts  = sample(policy, prompts x G, controller)      # tau recorded for every token
        rewards   = rewarder(completions)                        # verifier + user reward functions
        adv       = group_advantages(rewards)
        pass 1    : forward each micro-batch -> log-probs at recorded tau = old policy; controller scores; backward
        passes 2+ : (num_iterations > 1) forward/backward against the stored old log-probs
        controller.update(rollouts, adv, scores)
        log, evaluate, checkpoint

accelerate places the model and runs data-parallel training across processes: each process samples its own slice
of the prompts (whole groups), gradients are averaged by DDP, and metrics are reduced across processes.
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator

from kelvin.config import KelvinConfig, to_dict
from kelvin.controllers import build_controller
from kelvin.controllers.base import ScoringRequest, TemperatureController
from kelvin.controllers.fixed import FixedController
from kelvin.models.loading import count_parameters, eos_ids, load_pretrained, save_pretrained
from kelvin.models.warmup import WarmupRecipe, warmed_up_model_path
from kelvin.rewards.functions import Rewarder, completion_id_lists
from kelvin.rl.checkpoint import load_latest_checkpoint, rng_state, save_checkpoint, set_rng_state
from kelvin.rl.grpo import LossInputs, LossSettings, group_advantages, grpo_loss
from kelvin.rl.guards import NonFiniteGuard
from kelvin.rl.logprobs import token_logprobs_and_entropy
from kelvin.rl.policy_pass import PassOutput, assemble_scores, completion_logits, pad_to, policy_pass, trim
from kelvin.rl.resume import compare_resume_config
from kelvin.rl.rollouts import Rollouts, concat_rollouts
from kelvin.rl.run_folder import RUN_LOGS, restart_without_checkpoint, truncate_jsonl
from kelvin.rl.sampling import SamplingSettings, sample_in_chunks
from kelvin.tasks import build_task
from kelvin.tasks.base import Example
from kelvin.tasks.prompts import encode_prompts


def resolve_model_path(config: KelvinConfig, quiet: bool = False) -> Path:
    """The local model folder to train: `model.path`, or the cached warmed-up tiny model."""
    if config.model.path:
        return Path(config.model.path)
    size = config.model.tiny.removeprefix("arithmetic-")
    recipe = WarmupRecipe(size=size, steps=config.model.warmup_steps, seed=config.model.warmup_seed)
    if not config.model.tiny.startswith("arithmetic-"):
        recipe = WarmupRecipe(size=size, steps=0, seed=config.model.warmup_seed)
    return warmed_up_model_path(recipe, quiet=quiet)


def lr_at(config: KelvinConfig, optimizer_step: int, total_optimizer_steps: int) -> float:
    """Learning rate of an optimizer step: linear warm-up, then constant or cosine decay to min_lr_ratio."""
    o = config.optim
    if o.warmup_steps and optimizer_step < o.warmup_steps:
        return o.learning_rate * (optimizer_step + 1) / o.warmup_steps
    if o.lr_scheduler == "constant":
        return o.learning_rate
    span = max(total_optimizer_steps - o.warmup_steps, 1)
    progress = min(max(optimizer_step - o.warmup_steps, 0) / span, 1.0)
    return o.learning_rate * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


@dataclass
class StepRecord:
    """The rows of one rollout batch after sampling and rewarding (this process's share)."""

    rollouts: Rollouts
    examples: list[Example]
    texts: list[str]
    rewards: torch.Tensor
    accuracy: torch.Tensor
    advantages: torch.Tensor
    std_is_zero: torch.Tensor
    per_function: dict[str, torch.Tensor] = field(default_factory=dict)
    reward_failures: int = 0
    reward_timeouts: int = 0
    sampling_rounds: int = 1


class Trainer:
    def __init__(self, config: KelvinConfig, output_dir: str | Path, quiet: bool = False) -> None:
        self.config = config
        self.output_dir = Path(output_dir)
        self.quiet = quiet
        t = config.trainer
        if t.torch_threads:
            torch.set_num_threads(t.torch_threads)
        cpu = t.device == "cpu" or (t.device == "auto" and not torch.cuda.is_available())
        self.accelerator = Accelerator(cpu=cpu)
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        if t.prompts_per_step % self.world:
            raise ValueError(
                f"trainer.prompts_per_step={t.prompts_per_step} must be divisible by the number of processes "
                f"({self.world}); each process samples whole groups."
            )
        self.local_prompts = t.prompts_per_step // self.world
        self.device = self.accelerator.device
        self._seed_everything(t.seed)

        model_path = resolve_model_path(config, quiet=quiet or not self.is_main)
        dtype = torch.bfloat16 if config.model.dtype == "bfloat16" else torch.float32
        model, self.tokenizer = load_pretrained(model_path, dtype=dtype)
        self.reference = None
        if config.loss.beta > 0 and config.model.lora_r == 0:
            self.reference, _ = load_pretrained(model_path, dtype=dtype)
            self.reference.requires_grad_(False).eval().to(self.device)
        if config.model.lora_r > 0:
            model = self._wrap_lora(model)
        if config.model.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.model = self.accelerator.prepare(model.to(self.device))
        self.policy = self.accelerator.unwrap_model(self.model)
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=config.optim.learning_rate,
            betas=(config.optim.adam_beta1, config.optim.adam_beta2),
            weight_decay=config.optim.weight_decay,
        )
        hidden = getattr(self.policy.config, "hidden_size", None)
        self.controller: TemperatureController = build_controller(config, hidden_size=hidden)
        for module in self.controller.modules():
            module.to(self.device)
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
        self.generator = torch.Generator(device=self.device).manual_seed(t.seed * 1000 + self.rank)
        self.step = 0
        self.data_position = 0
        self.optimizer_steps = 0
        self.guard = NonFiniteGuard(config.optim.max_nonfinite_grad_steps)
        self.total_optimizer_steps = t.steps * config.loss.num_iterations
        self.metrics_path = self.output_dir / "metrics.jsonl"
        self.writer = None

    # ---------------------------------------------------------------------------------------------------------------
    # set-up helpers

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _wrap_lora(self, model: torch.nn.Module) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        m = self.config.model
        lora = LoraConfig(
            r=m.lora_r,
            lora_alpha=m.lora_alpha,
            lora_dropout=m.lora_dropout,
            target_modules=m.lora_target_modules,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, lora)

    # ---------------------------------------------------------------------------------------------------------------
    # one step

    def _prompts(self) -> tuple[list[Example], torch.Tensor, torch.Tensor]:
        """This process's prompts of the step, each repeated num_generations times (groups contiguous)."""
        g = self.config.sampling.num_generations
        first = self.data_position + self.rank * self.local_prompts
        examples = [self.task.train(first + i) for i in range(self.local_prompts)]
        ids, mask = self._encode(examples)
        ids = ids.repeat_interleave(g, dim=0).to(self.device)
        mask = mask.repeat_interleave(g, dim=0).to(self.device)
        return [e for e in examples for _ in range(g)], ids, mask

    def _encode(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_prompts(
            self.tokenizer,
            [e.prompt for e in examples],
            use_chat_template=self.task.use_chat_template and self.config.task.chat_template,
            system_prompt=self.config.task.system_prompt,
            max_prompt_length=self.config.sampling.max_prompt_length,
        )

    def _sample_and_reward(self) -> StepRecord:
        examples, ids, mask = self._prompts()
        rollouts = sample_in_chunks(
            self.policy,
            ids,
            mask,
            self.controller,
            self.sampling,
            self.config.sampling.batch_size,
            step=self.step,
            generator=self.generator,
            initial_temperature=self.initial_temperature,
        )
        rollouts.group_index = torch.arange(len(examples), device=self.device) // self.config.sampling.num_generations
        texts = self.tokenizer.batch_decode(
            rollouts.completion_ids * rollouts.completion_mask + self.sampling.pad_id * (1 - rollouts.completion_mask),
            skip_special_tokens=True,
        )
        ids = completion_id_lists(rollouts.completion_ids, rollouts.completion_mask)
        scored = self.rewarder(texts, examples, completion_ids=ids, step=self.step)
        rewards = scored.rewards.to(self.device)
        adv = group_advantages(rewards, self.config.sampling.num_generations, self.config.loss.scale_rewards)
        if self.config.loss.scale_rewards == "batch" and self.world > 1:
            all_rewards = self.accelerator.gather(rewards)
            adv_all = group_advantages(all_rewards, self.config.sampling.num_generations, "batch")
            n = rewards.numel()
            adv.advantages = adv_all.advantages[self.rank * n : (self.rank + 1) * n]
            adv.std_is_zero = adv_all.std_is_zero[self.rank * n : (self.rank + 1) * n]
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

    @property
    def initial_temperature(self) -> float:
        tau0 = getattr(self.controller, "initial_temperature", None)
        return float(tau0) if tau0 is not None else float(self.config.sampling.temperature)

    def _dynamic_sampling(self, record: StepRecord) -> StepRecord:
        """DAPO: keep groups with a reward spread, sample more rounds until the batch is full (or rounds run out)."""
        g = self.config.sampling.num_generations
        want = self.local_prompts
        kept: list[StepRecord] = []
        have, rounds = 0, 0
        current = record
        while True:
            rounds += 1
            informative = ~current.std_is_zero.view(-1, g)[:, 0]
            if informative.any():
                rows = torch.nonzero(informative.repeat_interleave(g)).squeeze(-1)
                kept.append(_select_record(current, rows))
                have += int(informative.sum())
            # Decided over all processes: they sample (and advance the data position) in lockstep.
            short = self.accelerator.reduce(torch.tensor(float(have < want), device=self.device), reduction="sum")
            if float(short) == 0 or rounds > self.config.loss.dynamic_sampling_max_rounds:
                break
            self.data_position += self.config.trainer.prompts_per_step
            current = self._sample_and_reward()
        if not kept:
            return record  # nothing informative at all: train on the original batch (advantages are all 0)
        merged = _merge_records(kept, self.sampling.pad_id)
        if have > want:
            merged = _select_record(merged, torch.arange(want * g, device=self.device))
        if have < want:  # top up with uninformative groups so every process keeps the same batch shape
            uninformative = torch.nonzero(current.std_is_zero.view(-1, g)[:, 0]).squeeze(-1)[: want - have]
            rows = (uninformative.unsqueeze(1) * g + torch.arange(g, device=self.device)).reshape(-1)
            merged = _merge_records([merged, _select_record(current, rows)], self.sampling.pad_id)
            if merged.rewards.numel() < want * g:
                merged = _merge_records(
                    [
                        merged,
                        _select_record(record, torch.arange(want * g - merged.rewards.numel(), device=self.device)),
                    ],
                    self.sampling.pad_id,
                )
        merged.sampling_rounds = rounds
        return merged

    def _loss_settings(self, micro_batches: int, active_tokens: float) -> LossSettings:
        lc = self.config.loss
        return LossSettings(
            loss_type=lc.loss_type,
            epsilon=lc.epsilon,
            epsilon_high=lc.epsilon if lc.epsilon_high is None else lc.epsilon_high,
            beta=lc.beta,
            use_bias_correction_kl=lc.use_bias_correction_kl,
            importance_sampling_level=lc.importance_sampling_level,
            entropy_coef=lc.entropy_coef,
            max_completion_length=self.config.sampling.max_completion_length,
            grad_accum_steps=micro_batches,
            num_items_in_batch=active_tokens,
            num_processes=self.world,
        )

    def _reference_logprobs(self, r: Rollouts) -> torch.Tensor:
        with torch.no_grad():
            if self.reference is not None:
                logits, _ = completion_logits(self.reference, r)
            else:  # LoRA: the base model is the reference
                with self.policy.disable_adapter():
                    logits, _ = completion_logits(self.policy, r)
            # The reference is the untruncated tempered distribution (as NeMo-RL): a truncated reference would give
            # -inf log-probs, and an infinite KL, for tokens the frozen model would not have kept.
            logp, _ = token_logprobs_and_entropy(logits, r.completion_ids, r.temperature, with_entropy=False)
            logp = logp.masked_fill(~r.completion_mask.bool(), 0.0)
        return logp

    def _update(self, record: StepRecord) -> tuple[dict[str, float], Any]:
        """Pass 1 (old log-probs + scores + first gradient) and further passes; one optimizer step per pass."""
        r = record.rollouts
        mask = r.completion_mask.float()
        if self.config.loss.mask_truncated_completions:
            mask = mask * (~r.truncated).float().unsqueeze(1)
        mb = min(self.config.trainer.micro_batch_size, r.batch_size)
        chunks = [slice(i, i + mb) for i in range(0, r.batch_size, mb)]
        active = self.accelerator.reduce(mask.sum().detach().clone(), reduction="sum").item()
        settings = self._loss_settings(len(chunks), active)
        train_policy = self.controller.trains_policy(self.step)
        request: ScoringRequest = self.controller.scoring_request()
        width = r.completion_ids.shape[1]
        old_logprobs = torch.zeros_like(mask)
        ref_logprobs = [None] * len(chunks)
        passes: list[PassOutput] = []
        sums: dict[str, float] = {}
        grad_norm = float("nan")
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.model.autocast_bf16)
        iterations = self.config.loss.num_iterations if train_policy else 1
        for iteration in range(iterations):
            for index, chunk in enumerate(chunks):
                micro = trim(r.select(chunk))
                w = micro.completion_ids.shape[1]
                micro_mask = mask[chunk, :w]
                grad = train_policy
                last = index == len(chunks) - 1
                sync = self.accelerator.no_sync(self.model) if (grad and not last and self.world > 1) else _null()
                with sync, torch.set_grad_enabled(grad), autocast:
                    out = policy_pass(self.model, micro, request if iteration == 0 else ScoringRequest())
                    if iteration == 0:
                        old_logprobs[chunk, :w] = out.logprobs.detach().float()
                        passes.append(out)
                        if self.config.loss.beta > 0:
                            ref_logprobs[index] = self._reference_logprobs(micro)
                    if not grad:
                        continue
                    inputs = LossInputs(
                        logprobs=out.logprobs.float(),
                        old_logprobs=old_logprobs[chunk, :w],
                        advantages=record.advantages[chunk],
                        mask=micro_mask,
                        ref_logprobs=ref_logprobs[index],
                        entropy=out.entropy.float(),
                    )
                    loss, stats = grpo_loss(inputs, settings)
                    self.accelerator.backward(loss)
                for name, value in vars(stats).items():
                    if name == "ratio_max":
                        sums[name] = max(sums.get(name, 0.0), value)
                    else:
                        sums[name] = sums.get(name, 0.0) + value
            if train_policy:
                grad_norm = self._optimizer_step()
        gap = ((r.behaviour_logprobs - old_logprobs).abs() * r.completion_mask).max().item()
        scores = assemble_scores(passes, old_logprobs, width)
        if train_policy:
            scores.old_logprobs = old_logprobs
        metrics = {"sampler_logprob_gap/max": gap, "grad_norm": grad_norm, "policy_updated": float(train_policy)}
        metrics.update(self._loss_metrics(sums, len(chunks) * iterations))
        if not train_policy:
            entropy = torch.cat([pad_to(p.entropy.detach(), width) for p in passes])
            metrics["entropy"] = float((entropy * mask).sum() / mask.sum().clamp(min=1))
        return metrics, scores

    def _loss_metrics(self, sums: dict[str, float], micro_batches: int) -> dict[str, float]:
        if not sums:
            return {}
        totals = torch.tensor(
            [
                sums["tokens"],
                sums["clip_low"],
                sums["clip_high"],
                sums["clip_region"],
                sums["clip_units"],
                sums["kl_sum"],
                sums["entropy_sum"],
                sums["policy_loss"],
            ],
            device=self.device,
            dtype=torch.float64,
        )
        totals = self.accelerator.reduce(totals, reduction="sum").tolist()
        tokens, low, high, region, units, kl, ent, loss = totals
        out = {
            "loss": loss / (micro_batches * self.world),
            "entropy": ent / max(tokens, 1),
            "clip_ratio/low_mean": low / max(units, 1),
            "clip_ratio/high_mean": high / max(units, 1),
            "clip_ratio/region_mean": region / max(units, 1),
            "ratio/max": sums["ratio_max"],
        }
        if self.config.loss.beta > 0:
            out["kl"] = kl / max(tokens, 1)
        return out

    def _optimizer_step(self) -> float:
        lr = lr_at(self.config, self.optimizer_steps, self.total_optimizer_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.config.optim.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        if self.guard.allow(float(norm)):  # a NaN/inf step is skipped and counted, never applied
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1
        return float(norm)

    def train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        self.controller.begin_step(self.step)
        record = self._sample_and_reward()
        if self.config.loss.dynamic_sampling:
            record = self._dynamic_sampling(record)
        t_sampled = time.perf_counter()
        update_metrics, scores = self._update(record)
        t_updated = time.perf_counter()
        controller_metrics = self.controller.update(record.rollouts, record.advantages, scores)
        self.data_position += self.config.trainer.prompts_per_step
        metrics = self._step_metrics(record, scores)
        metrics.update(update_metrics)
        metrics.update(self.controller.metrics())
        metrics.update(controller_metrics)
        metrics.update(self.guard.metrics())
        metrics["learning_rate"] = lr_at(self.config, max(self.optimizer_steps - 1, 0), self.total_optimizer_steps)
        metrics["time/sample_and_reward"] = t_sampled - t0
        metrics["time/update"] = t_updated - t_sampled
        metrics["time/step"] = time.perf_counter() - t0
        self._log_completions(record)
        self.step += 1
        return metrics

    def _step_metrics(self, record: StepRecord, scores: Any) -> dict[str, float]:
        r = record.rollouts
        g = self.config.sampling.num_generations
        gather = self.accelerator.gather
        rewards = gather(record.rewards)
        acc = gather(record.accuracy)
        zero_std = gather(record.std_is_zero.float())
        lengths = gather(r.completion_lengths.float())
        truncated = gather(r.truncated.float())
        mask = r.completion_mask.float()
        tau_sum = self.accelerator.reduce(
            torch.stack(
                [
                    (r.temperature.double() * mask).sum(),
                    (r.temperature.double() ** 2 * mask).sum(),
                    mask.double().sum(),
                    (scores.entropy_at_one.double() * mask).sum(),
                ]
            ),
            reduction="sum",
        ).tolist()
        tau_mean = tau_sum[0] / max(tau_sum[2], 1)
        metrics = {
            "step": self.step + 1,
            "reward": rewards.nanmean().item(),
            "reward_std": torch.nan_to_num(rewards.view(-1, g).std(dim=1)).mean().item(),
            "frac_reward_zero_std": zero_std.view(-1, g)[:, 0].mean().item(),
            "accuracy": acc.mean().item(),
            "completion_length": lengths.mean().item(),
            "completions/clipped_ratio": truncated.mean().item(),
            "temperature/mean": tau_mean,
            "temperature/std": math.sqrt(max(tau_sum[1] / max(tau_sum[2], 1) - tau_mean**2, 0.0)),
            "entropy/at_T1": tau_sum[3] / max(tau_sum[2], 1),
            "reward_failures": float(record.reward_failures),
            "reward_timeouts": float(record.reward_timeouts),
            "data_position": float(self.data_position),
        }
        for name, values in record.per_function.items():
            metrics[f"rewards/{name}/mean"] = gather(values).nanmean().item()
        if self.config.loss.dynamic_sampling:
            metrics["dynamic_sampling/rounds"] = float(record.sampling_rounds)
        return metrics

    def _log_completions(self, record: StepRecord) -> None:
        n = self.config.trainer.log_completions
        if not self.is_main or n <= 0:
            return
        r = record.rollouts
        with open(self.output_dir / "completions.jsonl", "a") as f:
            for i in range(min(n, r.batch_size)):
                m = r.completion_mask[i].bool()
                f.write(
                    json.dumps(
                        {
                            "step": self.step + 1,
                            "prompt": record.examples[i].prompt,
                            "completion": record.texts[i],
                            "answer": record.examples[i].answer,
                            "reward": float(record.rewards[i]),
                            "advantage": float(record.advantages[i]),
                            "temperature": [round(float(x), 4) for x in r.temperature[i][m]],
                        }
                    )
                    + "\n"
                )

    # ---------------------------------------------------------------------------------------------------------------
    # evaluation, checkpoints, the loop

    @torch.no_grad()
    def evaluate(self, temperature: float | None = None, controller: TemperatureController | None = None) -> float:
        """Held-out accuracy, one sample per prompt; greedy when temperature is 0. Uses its own generator."""
        temperature = self.config.trainer.eval_temperature if temperature is None else temperature
        examples = self.task.test
        ids, mask = self._encode(examples)
        settings = SamplingSettings(**{**vars(self.sampling), "greedy": temperature == 0})
        ctl = controller or FixedController(temperature if temperature > 0 else 1.0)
        generator = torch.Generator(device=self.device).manual_seed(12345)
        r = sample_in_chunks(
            self.policy,
            ids.to(self.device),
            mask.to(self.device),
            ctl,
            settings,
            chunk=256,
            step=self.step,
            generator=generator,
            initial_temperature=self.initial_temperature if controller else 1.0,
        )
        outputs = self.tokenizer.batch_decode(r.completion_ids, skip_special_tokens=True)
        return float(self.rewarder(outputs, examples).accuracy.mean())  # verified under the reward time limit

    def _checkpoint_state(self) -> dict[str, Any]:
        return {
            "data_position": self.data_position,
            "optimizer_steps": self.optimizer_steps,
            "controller": self.controller.state_dict(),
            "rng": rng_state(),
            "generator": self.generator.get_state(),
            "config": to_dict(self.config),
            "nonfinite_guard": self.guard.state_dict(),
        }

    def save(self) -> None:
        if not self.is_main:
            return
        save_checkpoint(
            self.output_dir / "checkpoints",
            self.step,
            self.policy,
            self.optimizer,
            self._checkpoint_state(),
            self.config.trainer.keep_last,
        )

    def resume(self) -> bool:
        """Restore the newest complete checkpoint in the output folder; drop metrics logged after it."""
        loaded = load_latest_checkpoint(self.output_dir / "checkpoints", self.policy, self.optimizer)
        if loaded is None:
            if self.is_main and restart_without_checkpoint(self.output_dir):
                print(f"kelvin: {self.output_dir} has no complete checkpoint: starting afresh", file=sys.stderr)
            return False
        _, state = loaded
        compare_resume_config(state["config"], to_dict(self.config))
        self.guard.load_state_dict(state.get("nonfinite_guard", {}))
        self.step = state["step"]
        self.data_position = state["data_position"]
        self.optimizer_steps = state["optimizer_steps"]
        self.controller.load_state_dict(state["controller"])
        set_rng_state(state["rng"])
        self.generator.set_state(state["generator"])
        for name in RUN_LOGS:
            truncate_jsonl(self.output_dir / name, self.step)
        return True

    def save_final_model(self) -> Path:
        folder = self.output_dir / "model"
        if self.is_main:
            model = self.policy
            if self.config.model.lora_r > 0:
                # A plain merged model for `kelvin eval/generate`, plus the adapter; merge a copy, since
                # merge_and_unload rewrites the live peft model in place.
                self.policy.save_pretrained(folder / "adapter")
                model = copy.deepcopy(self.policy).merge_and_unload()
            save_pretrained(model, self.tokenizer, folder)
            save_head = getattr(self.controller, "save_pretrained", None)
            if save_head is not None:
                save_head(folder)
        return folder

    def _log(self, metrics: dict[str, float]) -> None:
        if not self.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(key, value, int(metrics["step"]))

    def train(self, resume: bool = False, progress: bool = True) -> dict[str, Any]:
        """Run the configured number of steps; returns a summary (accuracy before/after, paths)."""
        t = self.config.trainer
        self.output_dir.mkdir(parents=True, exist_ok=True)
        resumed = resume and self.resume()
        if self.is_main:
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
            if t.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.output_dir / "tensorboard"))
        summary: dict[str, Any] = {
            "output_dir": str(self.output_dir),
            "resumed_from_step": self.step if resumed else 0,
            "parameters": count_parameters(self.policy),
        }
        if not resumed:
            summary["accuracy_before"] = self.evaluate()
            self._log({"step": 0, "eval/accuracy": summary["accuracy_before"]})
        bar = _progress(progress and self.is_main and not self.quiet)
        task_id = bar.add_task("train", total=t.steps, completed=self.step, info="") if bar else None
        with bar or _null():
            while self.step < t.steps:
                metrics = self.train_step()
                if t.eval_every and self.step % t.eval_every == 0 and self.step < t.steps:
                    metrics["eval/accuracy"] = self.evaluate()
                if self.step == t.steps:
                    metrics["eval/accuracy"] = self.evaluate()
                    summary["accuracy_after"] = metrics["eval/accuracy"]
                self._log(metrics)
                if bar is not None:
                    bar.update(
                        task_id,
                        advance=1,
                        info=f"reward {metrics['reward']:.3f}  acc {metrics['accuracy']:.3f}"
                        f"  T {metrics['temperature/mean']:.2f}",
                    )
                if (t.save_every and self.step % t.save_every == 0) or self.step == t.steps:
                    self.save()
        summary["model_dir"] = str(self.save_final_model())
        if self.writer is not None:
            self.writer.close()
        if self.is_main:
            (self.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def _select_record(record: StepRecord, rows: torch.Tensor) -> StepRecord:
    idx = rows.tolist()
    return StepRecord(
        rollouts=record.rollouts.select(rows),
        examples=[record.examples[i] for i in idx],
        texts=[record.texts[i] for i in idx],
        rewards=record.rewards[rows],
        accuracy=record.accuracy[rows],
        advantages=record.advantages[rows],
        std_is_zero=record.std_is_zero[rows],
        per_function={k: v[rows] for k, v in record.per_function.items()},
        reward_failures=record.reward_failures,
        reward_timeouts=record.reward_timeouts,
    )


def _merge_records(parts: list[StepRecord], pad_id: int) -> StepRecord:
    return StepRecord(
        rollouts=concat_rollouts([p.rollouts for p in parts], pad_id),
        examples=[e for p in parts for e in p.examples],
        texts=[x for p in parts for x in p.texts],
        rewards=torch.cat([p.rewards for p in parts]),
        accuracy=torch.cat([p.accuracy for p in parts]),
        advantages=torch.cat([p.advantages for p in parts]),
        std_is_zero=torch.cat([p.std_is_zero for p in parts]),
        per_function={k: torch.cat([p.per_function[k] for p in parts]) for k in parts[0].per_function},
        reward_failures=sum(p.reward_failures for p in parts),
        reward_timeouts=sum(p.reward_timeouts for p in parts),
    )


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _progress(enabled: bool):
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("step"),
        MofNCompleteColumn(),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
