"""One typed configuration tree for every Kelvin command.

Recipes are YAML files whose nesting mirrors `KelvinConfig`; the command line adds dotted overrides
(`trainer.steps=50 sampling.temperature=0.8`). Field names follow TRL's `GRPOConfig` wherever the concept is the
same, so a TRL user can port a config by moving keys into sections. Every field carries its meaning in
`metadata["help"]`; `kelvin config --explain` prints them.

Validation is loud and happens before any work: an error names the field, the value and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import logging
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid. The message names the field, the value and how to fix it."""


# Sampling divides logits by the temperature in float32: 1e-50 is 0 there (a division by zero after the first
# evaluation) and inf turns every logit into 0 or NaN. Temperatures live in [TEMPERATURE_MIN, TEMPERATURE_MAX]
# (0 stays allowed where it means greedy): logits up to ~1e35 divided by 1e-3 stay finite, and 100 is already
# indistinguishable from uniform sampling for any real vocabulary.
TEMPERATURE_MIN = 1e-3
TEMPERATURE_MAX = 100.0
TINY_MODELS = ("arithmetic-1m", "arithmetic-10m", "1m", "10m")
_FLOAT32_MAX = 3.4028234663852886e38
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# Fields of controller sections that hold temperatures (schedule start/end/stages, TAMPO candidates, tau_min/max/0,
# EDT t0, min/max_temperature): bounded like sampling.temperature.
_TEMPERATURE_FIELD = re.compile(r"^(tau\w*|t0|start|end|stages|candidates|\w*temperature)$")


def doc(default: Any, help: str) -> Any:
    """A dataclass field with a documented default (mutable defaults are copied per instance)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


# --------------------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    path: str | None = doc(
        None,
        "Local folder of a Hugging Face causal LM (config.json + safetensors + tokenizer). Loaded with "
        "local_files_only: nothing is downloaded. Leave empty to use `tiny`.",
    )
    tiny: str = doc(
        "arithmetic-1m",
        "When `path` is empty: a built-in tiny Llama model with a character tokenizer, warmed up by supervised "
        "training on the arithmetic task and cached by a hash of its settings. Sizes: "
        "'arithmetic-1m' (d=128, 4 layers), 'arithmetic-10m' (d=384, 6 layers). A name without the "
        "'arithmetic-' prefix ('1m', '10m') gives the same architecture randomly initialised.",
    )
    warmup_steps: int = doc(
        300, "Supervised warm-up steps for the tiny model (batch 128, AdamW lr 2e-3); 300 gives ~0.45 accuracy at T=1."
    )
    warmup_seed: int = doc(0, "Seed of the tiny model's initialisation and warm-up data.")
    dtype: Literal["float32", "bfloat16"] = doc(
        "float32", "Weights' dtype. bfloat16 halves memory; on CPU fp32 is the safe default."
    )
    autocast_bf16: bool = doc(
        False, "Run the policy-update forward/backward under bf16 autocast (2x faster for >=10M models on CPU/GPU)."
    )
    gradient_checkpointing: bool = doc(False, "Trade compute for memory in the policy update (transformers' own).")
    lora_r: int = doc(0, "LoRA rank (peft). 0 trains every weight. With LoRA the reference model is the base model.")
    lora_alpha: int = doc(16, "LoRA alpha (peft); the update is scaled by alpha / r.")
    lora_dropout: float = doc(0.0, "LoRA dropout (peft).")
    lora_target_modules: list[str] = doc(
        ["q_proj", "k_proj", "v_proj", "o_proj"], "Module names LoRA adapts (peft `target_modules`)."
    )


@dataclass
class TaskConfig:
    name: Literal[
        "arithmetic",
        "gsm8k",
        "aime24",
        "amc23",
        "math500",
        "minerva_math",
        "olympiadbench",
        "dataset",
        "reasoning_gym",
    ] = doc(
        "arithmetic",
        "Which task supplies prompts and the verifier. 'arithmetic': the embedded addition task with a "
        "digit-by-digit working-out format. 'gsm8k': GSM8K word problems (answer after '####'; prompts ask for "
        "the final answer in \\boxed{}). A benchmark name (aime24, amc23, math500, minerva_math, olympiadbench) "
        "trains on that benchmark's rows in file order and evaluates on all of them. 'dataset': your own file "
        "(task.path, task.prompt_column, task.answer_column, task.verifier). 'reasoning_gym': procedural problems "
        "from the reasoning-gym package (task.dataset, task.options; pip install 'kelvin[reasoning-gym]').",
    )
    path: str | None = doc(
        None,
        "dataset: the training data, read with the `datasets` library: a .jsonl, .json, .csv or .parquet file, or "
        "a folder written by `Dataset.save_to_disk` (its 'train' split if it holds several).",
    )
    test_path: str | None = doc(
        None, "dataset: the held-out set, same formats as task.path. Empty: task.test_size rows of task.path."
    )
    test_size: float = doc(
        0.1,
        "dataset without task.test_path: rows held out of task.path for evaluation (never trained on): a fraction "
        "in (0, 1) or a row count >= 1, drawn with task.seed; the held-out set is then capped at task.eval_size.",
    )
    prompt_column: str = doc(
        "prompt",
        "dataset: the column holding the prompt: plain text, or a list of chat messages "
        "[{role, content}, ...] (TRL's conversational format; needs a tokenizer with a chat template).",
    )
    answer_column: str | None = doc(
        "answer",
        "dataset: the column holding the gold answer: a bare answer, a number, a solution whose last \\boxed{} "
        "is the answer, or GSM8K-style text ending '#### answer'. Every other column reaches reward functions "
        "as a keyword argument, as in TRL.",
    )
    verifier: Literal["math", "exact", "none"] = doc(
        "math",
        "dataset: how a completion's final answer (last \\boxed{}, else after 'The answer is', else the last "
        "number) is checked against the gold answer. 'math': math-verify equivalence under reward.timeout_s. "
        "'exact': equal after whitespace/'$' normalisation. 'none': no verifier; reward.functions give the whole "
        "reward (the verifier reward and accuracy then read 0).",
    )
    instruction: str | None = doc(
        None,
        "dataset, reasoning_gym: text appended to every text prompt after a blank line (or to the last user "
        "message), e.g. 'Please reason step by step, and put your final answer within \\boxed{}.'",
    )
    fallback: Literal["none", "gsm8k"] = doc(
        "none",
        "dataset: what to train on when task.path does not exist. 'none': fail. 'gsm8k': the shipped GSM8K, with a "
        "warning; the resolved config (config.yaml) then says task.name=gsm8k, so a comparison reruns once the "
        "file is there. The paper recipes use it for their training sets, which a user downloads (docs/papers.md).",
    )
    dataset: str = doc(
        "basic_arithmetic",
        "reasoning_gym: the generator's name (basic_arithmetic, chain_sum, products, countdown, gsm_symbolic, ...; "
        "reasoning_gym.factory.DATASETS lists them all).",
    )
    options: dict[str, Any] = doc(
        {},
        "reasoning_gym: the generator's own options, passed through (e.g. {min_terms: 2, max_terms: 3} for "
        "chain_sum); `seed` and `size` are set by Kelvin (task.seed, task.eval_size).",
    )
    min_digits: int = doc(1, "arithmetic: fewest digits of each operand.")
    max_digits: int = doc(4, "arithmetic: most digits of each operand.")
    arithmetic_style: Literal["working", "question"] = doc(
        "working",
        "arithmetic: 'working' = the scratchpad format of the embedded character model; 'question' = a plain chat "
        "question for pretrained instruct models, checked on the last integer of the reply.",
    )
    seed: int = doc(
        1234,
        "arithmetic: seed of the training-prompt stream (held-out prompts use a separate seed). gsm8k: seed of "
        "the per-epoch shuffle of the training rows.",
    )
    eval_seed: int | None = doc(
        None,
        "Seed of the held-out problems, kept apart from the training order (task.seed) so that runs with different "
        "data orders are evaluated on the same problems. arithmetic, reasoning_gym: the generated test and "
        "validation problems; dataset without task.test_path: which rows are held out. Empty: task.seed. "
        "`kelvin compare` pins it to the base's value while each seed varies task.seed (docs/compare.md).",
    )
    data_path: str | None = doc(
        None,
        "gsm8k: folder holding train.jsonl and test.jsonl (default: the copy shipped in kelvin/data/gsm8k; "
        "$KELVIN_DATA overrides the data root). Benchmarks: the .jsonl file, its folder, or a data root holding "
        "math_eval/ (default: the shipped kelvin/data).",
    )
    chat_template: bool = doc(
        True, "Wrap prompts in the tokenizer's chat template when it has one (real instruct models)."
    )
    system_prompt: str | None = doc(None, "Optional system message for chat-template prompts.")
    eval_size: int = doc(
        256, "Held-out prompts used for accuracy evaluation during training (arithmetic, gsm8k; benchmarks use all)."
    )
    eval_split: Literal["test", "validation"] = doc(
        "test",
        "arithmetic: which held-out problems evaluation uses. 'validation' is a third stream, disjoint in seed from "
        "training and test, for choosing settings (e.g. the best fixed temperature) without touching the test set.",
    )


@dataclass
class RewardConfig:
    functions: list[str] = doc(
        [],
        "Extra reward functions as 'module:function' (TRL signature "
        "`f(completions, **columns) -> list[float | None]`). "
        "The task's verifier (accuracy, 0/1) is always the first reward.",
    )
    weights: list[float] = doc(
        [], "Weights of [verifier, *functions]; empty means 1.0 for each (TRL's `reward_weights`)."
    )
    timeout_s: float = doc(
        5.0,
        "Time limit per reward call: the verifier on one completion, or one reward function on the whole batch. "
        "Calls run in a worker process; one that raises or runs over gives its samples no reward (counted in "
        "the metrics) and training goes on.",
    )


@dataclass
class SamplingConfig:
    temperature: float = doc(
        1.0,
        "Rollout temperature for the `fixed` controller, and tau_0 / starting point for the others "
        "(TRL's `temperature`). Every temperature setting lies in [0.001, 100]: float32 logits divided by it stay "
        "finite.",
    )
    top_p: float = doc(
        1.0,
        "Nucleus sampling. Below 1.0 the truncation is replayed exactly in every log-probability "
        "(policy, old, reference) so the importance ratio stays exact.",
    )
    top_k: int = doc(0, "Top-k sampling; 0 disables it. Replayed in the loss like `top_p`.")
    max_completion_length: int = doc(48, "Most tokens generated per completion (TRL's `max_completion_length`).")
    max_prompt_length: int = doc(512, "Prompts longer than this (in tokens) are left-truncated; >= 1.")
    num_generations: int = doc(8, "Completions sampled per prompt, the GRPO group size G (TRL's `num_generations`).")
    cache: Literal["static", "dynamic"] = doc(
        "static", "KV cache of the sampler. The static cache is ~2x faster at large batch on CPU."
    )
    batch_size: int = doc(0, "Sequences sampled together; 0 means the whole rollout batch at once.")
    engine: Literal["kelvin", "vllm"] = doc(
        "kelvin",
        "Who samples the rollouts. kelvin: Kelvin's own KV-cache sampler, every controller (per-token temperatures "
        "included). vllm: a vLLM engine colocated in the training process (TRL's `use_vllm` + `vllm_mode=colocate`, "
        "verl's `rollout.name=vllm`), fed the updated weights after every optimizer step; it takes one temperature "
        "per batch, so it serves fixed, schedule, entropy_target and tampo only. Needs `pip install kelvin[vllm]` "
        "(GPU) or the CPU recipe in docs/vllm.md.",
    )
    vllm_importance_sampling_correction: bool = doc(
        True,
        "engine=vllm: multiply the per-token loss by the importance weight pi_trainer(y) / pi_vllm(y) at the "
        "recorded tau, correcting for the two engines' numerical mismatch (truncated IS: Yao et al. 2025, 'Your "
        "efficient RL framework secretly brings you off-policy RL training'; TRL's field of the same name).",
    )
    vllm_importance_sampling_mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = doc(
        "sequence_mask",
        "How the weights are formed (TRL 1.16's modes and default): token_* one weight per token, sequence_* one per "
        "completion from the summed log-ratio; *_truncate clamps weights to [clip_min, clip_max], *_mask sets weights "
        "outside it to 0 (the token or sequence leaves the loss).",
    )
    vllm_importance_sampling_clip_max: float | None = doc(
        3.0, "Upper bound C_max of the importance weight (TRL's default 3.0); None: no upper bound."
    )
    vllm_importance_sampling_clip_min: float | None = doc(
        None, "Lower bound C_min of the importance weight; None: no lower bound (TRL's default)."
    )
    vllm_importance_sampling_cap: float | None = doc(
        None, "TRL's older name of vllm_importance_sampling_clip_max (deprecated there since TRL 1.6); it sets C_max."
    )
    vllm_gpu_memory_utilization: float = doc(
        0.3,
        "engine=vllm on a GPU: share of GPU memory vLLM may take for weights and KV cache, the rest stays for "
        "training (TRL's colocate default 0.3). Unused on CPU, where the KV cache is vLLM's VLLM_CPU_KVCACHE_SPACE.",
    )
    vllm_enable_sleep_mode: bool = doc(
        False,
        "engine=vllm on a GPU: put the engine to sleep during the policy update (its KV cache freed, its weights "
        "offloaded) and wake it before sampling (TRL's `vllm_enable_sleep_mode`). Not on CPU.",
    )
    vllm_tensor_parallel_size: int = doc(
        1, "engine=vllm: GPUs one engine shards the model over (TRL's `vllm_tensor_parallel_size`); 1 on CPU."
    )
    vllm_max_model_length: int | None = doc(
        None,
        "engine=vllm: the engine's context length (vLLM's max_model_len); None: max_prompt_length + "
        "max_completion_length, capped by the model's own limit.",
    )


@dataclass
class ControllerSection:
    """Base of a controller's own config section (`controller.<name>.*`), defined beside the controller.

    The registry in `kelvin.controllers` installs each registered section into `ControllerConfig`.
    """

    def validate(self, sampling: SamplingConfig) -> None:
        """Raise ConfigError naming field, value and fix. `sampling` is there for checks against its temperature."""

    def policy_update_steps(self, total_steps: int) -> int:
        """How many of the training steps 0..total_steps-1 update the token policy (the learning-rate schedule is
        planned over these, and comparisons check that every arm gets the same number)."""
        return total_steps

    def comparison_defaults(self) -> dict[str, Any]:
        """Field values this section takes inside a comparison unless the recipe sets them (equal budgets)."""
        return {}


def _controller_config_class(sections: dict[str, type[ControllerSection]]) -> type:
    """`controller.name` (one of the registered names) plus one section per registered controller."""
    names = tuple(sections)
    fields: list[Any] = [
        (
            "name",
            Literal[names] if names else str,  # type: ignore[valid-type]
            doc(
                names[0] if names else "",
                "Which temperature controller chooses the sampling temperature (DESIGN section 4).",
            ),
        )
    ]
    fields += [(name, cls, field(default_factory=cls)) for name, cls in sections.items()]
    made = dataclasses.make_dataclass("ControllerConfig", fields)
    made.__module__ = __name__
    made.__doc__ = "The `controller` section: `name` and one sub-section per registered controller."
    return made


ControllerConfig = _controller_config_class({})
_controllers_installed = False

# The controller registry, imported by name on first use of the config tree: importing it registers the built-in
# controllers (and so fills `ControllerConfig`). Loaded lazily so that `kelvin --help` does not import torch; the
# config itself names no controller.
CONTROLLER_REGISTRY_MODULE = "kelvin.controllers"


def install_controller_sections(sections: dict[str, type[ControllerSection]]) -> None:
    """Rebuild `ControllerConfig` from the registry (kelvin.controllers.registry calls this on every change)."""
    global ControllerConfig, _controllers_installed
    ControllerConfig = _controller_config_class(dict(sections))
    _controllers_installed = True


def _ensure_controllers() -> None:
    if not _controllers_installed:
        importlib.import_module(CONTROLLER_REGISTRY_MODULE)


def _new_controller_config() -> Any:
    _ensure_controllers()
    return ControllerConfig()


def controller_section(config: KelvinConfig) -> ControllerSection:
    """The chosen controller's own section, `controller.<controller.name>`."""
    return getattr(config.controller, config.controller.name)


@dataclass
class LossConfig:
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo"] = doc(
        "dapo",
        "Loss normaliser, exactly as TRL 1.16: grpo = per-sequence mean then mean over rows; bnpo = tokens of the "
        "micro-batch; dr_grpo = B x max_completion_length (Dr. GRPO, arXiv 2503.20783); dapo = active tokens of the "
        "whole generation batch across processes (DAPO, arXiv 2503.14476).",
    )
    epsilon: float = doc(0.2, "Lower clip: ratio below 1 - epsilon is clipped (PPO/GRPO).")
    epsilon_high: float | None = doc(None, "Upper clip; None means = epsilon. DAPO's clip-higher uses 0.28.")
    beta: float = doc(0.0, "KL coefficient to a frozen reference model, k3 estimator. 0 loads no reference model.")
    use_bias_correction_kl: bool = doc(
        True, "Multiply the per-token KL by the importance ratio (TRL 1.16's default), making it unbiased off-policy."
    )
    scale_rewards: Literal["group", "batch", "none"] = doc(
        "group", "Advantage scaling: divide by the group's std (GRPO), the batch std, or not at all (Dr. GRPO)."
    )
    importance_sampling_level: Literal["token", "sequence"] = doc(
        "token", "Ratio per token, or one per sequence from the mean log-ratio (GSPO, arXiv 2507.18071)."
    )
    entropy_coef: float = doc(0.0, "Entropy bonus coefficient; entropy of softmax(z / tau) at the recorded tau.")
    mask_truncated_completions: bool = doc(
        False, "Exclude completions that hit max_completion_length without EOS from the loss (DAPO)."
    )
    num_iterations: int = doc(1, "Optimisation passes over each rollout batch (TRL's `num_iterations`, PPO epochs).")
    dynamic_sampling: bool = doc(
        False, "DAPO dynamic sampling: drop groups whose rewards are all equal and sample more until the batch is full."
    )
    dynamic_sampling_max_rounds: int = doc(4, "Most extra sampling rounds to fill the batch with dynamic sampling.")


@dataclass
class OptimConfig:
    learning_rate: float = doc(1e-6, "AdamW learning rate of the policy (TRL's default; recipes set their own).")
    weight_decay: float = doc(0.0, "AdamW weight decay.")
    adam_beta1: float = doc(0.9, "AdamW beta1.")
    adam_beta2: float = doc(0.999, "AdamW beta2 (TRL / transformers default).")
    max_grad_norm: float = doc(1.0, "Gradient-norm clip; 0 disables.")
    lr_scheduler: Literal["constant", "cosine"] = doc(
        "constant",
        "Learning-rate schedule over the policy updates the run takes (trainer.steps x loss.num_iterations, less "
        "IntroLLM's head-only steps), indexed by the updates actually taken.",
    )
    min_lr_ratio: float = doc(0.0, "cosine: lr of the last policy update = ratio x learning_rate (TAMPO: 0.1).")
    warmup_steps: int = doc(0, "Linear lr warm-up steps.")
    max_nonfinite_grad_steps: int = doc(
        3,
        "An optimizer step whose gradient norm is NaN/inf is skipped (weights untouched; counted in the metric "
        "`nonfinite_grad_steps`); after this many consecutive skips training stops with an error. 0 stops at the "
        "first one.",
    )


@dataclass
class TrainerConfig:
    steps: int = doc(100, "Training steps; each samples one rollout batch and updates on it.")
    prompts_per_step: int = doc(64, "Distinct prompts per step; the rollout batch is prompts x num_generations.")
    micro_batch_size: int = doc(
        64, "Sequences per forward/backward; the batch is split and gradients accumulated (TRL's per-device batch)."
    )
    num_processes: int = doc(
        1,
        "Data-parallel processes that train together. `kelvin train` starts them itself (torch.distributed's "
        "launcher: gloo on CPU, nccl on GPUs, one GPU each); each samples prompts_per_step / num_processes prompts.",
    )
    sharding: Literal["none", "fsdp2"] = doc(
        "none",
        "'none': every process holds the whole model (DDP). 'fsdp2': parameters, gradients and optimizer state are "
        "sharded over the processes (torch FSDP2 `fully_shard`), for models that do not fit one device.",
    )
    seed: int = doc(0, "Seed of sampling and training (data order is `task.seed`).")
    device: str = doc(
        "auto", "'auto' (cuda if available else cpu), 'cpu', 'cuda' or 'cuda:N'. accelerate decides under launch."
    )
    torch_threads: int = doc(0, "CPU threads for torch; 0 keeps torch's default.")
    log_completions: int = doc(8, "Sample completions written to completions.jsonl per logged step.")
    eval_every: int = doc(0, "Evaluate held-out accuracy every N steps (0: only before and after training).")
    eval_temperature: float = doc(1.0, "Temperature of the in-training accuracy evaluation (and 0 = greedy).")
    save_every: int = doc(0, "Write a checkpoint every N steps (0: only at the end).")
    keep_last: int = doc(2, "Checkpoints kept; older ones are deleted after a new one is complete.")
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = doc(
        ["tensorboard"],
        "Experiment trackers, through accelerate's (TRL's `report_to`); [] for none. Each gets the metrics.jsonl "
        "names. tensorboard: <output_dir>/tensorboard. wandb: offline in <output_dir>/wandb unless $WANDB_MODE is "
        "set. mlflow: $MLFLOW_TRACKING_URI, else SQLite <output_dir>/mlflow.db (pip install 'kelvin[mlflow]'). "
        "trackio: its local store.",
    )
    tensorboard: bool = doc(
        True, "Shorthand kept for existing recipes and commands: false drops 'tensorboard' from trainer.report_to."
    )


@dataclass
class KelvinConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    controller: ControllerConfig = field(default_factory=_new_controller_config)  # rebuilt by the registry
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    @property
    def rollout_batch_size(self) -> int:
        return self.trainer.prompts_per_step * self.sampling.num_generations


# --------------------------------------------------------------------------------------------------------------------
# Loading: YAML + dotted overrides -> typed tree
# --------------------------------------------------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    _ensure_controllers()  # KelvinConfig's `controller` annotation names the registry-built ControllerConfig
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Turn a YAML/CLI value into the annotated type, or raise a ConfigError naming `where`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        errors = []
        for arg in non_none:
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{where}={value!r} is not allowed: choose one of {list(args)}.{hint}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{where}={value!r} must be a list, e.g. {where}=[1,2,3].")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}={value!r} must be a mapping, e.g. {where}={{min_terms: 2, max_terms: 3}}.")
        return {str(k): v for k, v in value.items()}
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where}={value!r} must be true or false.")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} must be an integer.")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value))
        except ValueError:
            raise ConfigError(f"{where}={value!r} must be an integer.") from None
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}={value!r} must be a number.")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}={value!r} must be a number.") from None
        if not math.isfinite(number):  # nan/inf pass every `> 0` check and poison training later
            raise ConfigError(f"{where}={value!r} must be a finite number (NaN and infinity are not allowed).")
        if abs(number) > _FLOAT32_MAX:  # training runs in float32 (or bf16): 1e39 is inf there
            raise ConfigError(f"{where}={value!r} overflows float32 (largest {_FLOAT32_MAX:.3g}); use a smaller value.")
        return number
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}={value!r} must be a string.")
        return str(value)
    raise ConfigError(f"{where}: unsupported config type {annotation!r}")


def build_section(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """A typed config section (or the whole tree) from a mapping, field by field with ConfigErrors that name
    `prefix` + field; no cross-field validation (`load_config` / `config_from_dict` add it)."""
    return _build(cls, data, prefix)


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        name = prefix.rstrip(".") or "config"
        raise ConfigError(f"{name} must be a mapping of fields (e.g. {name}.steps=5), got {data!r}.")
    types_ = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in types_:
            close = difflib.get_close_matches(key, list(types_), n=1)
            hint = f" Did you mean '{prefix}{close[0]}'?" if close else f" Known fields: {sorted(types_)}."
            raise ConfigError(f"Unknown config key '{where}'.{hint}")
        annotation = types_[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _build(annotation, value or {}, f"{where}.")
        else:
            kwargs[key] = _coerce(value, annotation, where)
    return cls(**kwargs)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key '{key}' appears twice (first on line {seen[key] + 1}); keep one",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, what: str = "Recipe") -> dict[str, Any]:
    """A YAML mapping from `path` (safe tags only, unique keys), or a ConfigError naming the file, line and column."""
    if path.is_dir():
        raise ConfigError(f"{what} '{path}' is a folder; pass a YAML file in it, e.g. {path}/<name>.yaml.")
    if not path.is_file():
        raise ConfigError(f"{what} '{path}' does not exist. Pass a YAML file, e.g. recipes/arithmetic-fixed.yaml.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise ConfigError(
            f"{what} '{path}' line {line}: not UTF-8 text ({err.reason}); save the file as UTF-8."
        ) from None
    except OSError as err:
        raise ConfigError(f"{what} '{path}' cannot be read: {err.strerror}; check its permissions.") from None
    try:
        tree = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe tags only
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        hint = " (YAML indents with spaces, not tabs)" if "\t" in text and "tab" in str(err).lower() else ""
        raise ConfigError(f"{what} '{path}'{where}: {problem}{hint}; fix the YAML there.") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise ConfigError(
            f"{what} '{path}' holds a {type(tree).__name__}, not a mapping of sections (model:, trainer:, ...)."
        )
    return tree


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """tree[a][b][c] = value for 'a.b.c', creating sections on the way."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"Override '{dotted}': '{part}' is a value, not a section.")
        node = child
    node[parts[-1]] = value


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> KelvinConfig:
    """Read a YAML recipe (optional), apply `a.b.c=value` overrides, build and validate the typed tree."""
    tree: dict[str, Any] = {}
    if recipe is not None:
        tree = read_yaml(Path(recipe), "Recipe")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' must look like section.field=value, e.g. trainer.steps=50.")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"Override '{item}' has no field name; write section.field=value, e.g. trainer.steps=50.")
        raw = raw.strip()
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"Override '{item}': the value is not valid YAML ({problem}); quote it.") from None
        set_dotted(tree, key.strip(), value)
    config = _build(KelvinConfig, tree, "")
    apply_task_fallback(config)
    validate(config)
    return config


def config_from_dict(tree: dict[str, Any]) -> KelvinConfig:
    config = _build(KelvinConfig, tree, "")
    apply_task_fallback(config)
    validate(config)
    return config


def apply_task_fallback(c: KelvinConfig) -> None:
    """task.name=dataset with a missing task.path and task.fallback set: train on the fallback task instead, and
    say so. Resolved here, not when the task is built, so that the run's config records what it trained on."""
    t = c.task
    if t.name != "dataset" or t.fallback == "none" or not t.path or Path(t.path).exists():
        return
    logging.getLogger("kelvin.config").warning(
        "task.path=%s does not exist: training on %s instead (task.fallback=%s). docs/papers.md gives the command "
        "that fetches the file.",
        t.path,
        t.fallback,
        t.fallback,
    )
    t.name = t.fallback


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _temperature(name: str, value: float, greedy_zero: bool = False) -> None:
    """A temperature float32 sampling can divide by: in [TEMPERATURE_MIN, TEMPERATURE_MAX] (or 0 = greedy)."""
    if greedy_zero and value == 0:
        return
    _require(
        TEMPERATURE_MIN <= value <= TEMPERATURE_MAX,
        f"{name}={value} must be in [{TEMPERATURE_MIN:g}, {TEMPERATURE_MAX:g}]"
        + (" or 0 for greedy" if greedy_zero else "")
        + "; use a small value like 0.1 for near-greedy sampling (smaller values overflow float32 logits).",
    )


def _validate_ranges(c: KelvinConfig) -> None:
    """Single-field bounds that the checks below do not cover (each used to train wrongly or fail late)."""
    m, s, t, o = c.model, c.sampling, c.trainer, c.optim
    _require(
        m.path is not None or m.tiny in TINY_MODELS,
        f"model.tiny='{m.tiny}' is unknown; choose one of {list(TINY_MODELS)} or set model.path to a model folder.",
    )
    _require(m.warmup_steps >= 0, f"model.warmup_steps={m.warmup_steps} must be >= 0 (0 = untrained tiny model).")
    _require(m.lora_r >= 0, f"model.lora_r={m.lora_r} must be >= 0 (0 = no LoRA).")
    _require(0 <= m.lora_dropout < 1, f"model.lora_dropout={m.lora_dropout} must be in [0, 1).")
    _require(c.task.eval_size >= 1, f"task.eval_size={c.task.eval_size} must be >= 1 (held-out prompts).")
    _require(
        s.max_prompt_length >= 1,
        f"sampling.max_prompt_length={s.max_prompt_length} must be >= 1 (a negative value cut every prompt's "
        "first tokens); e.g. 512.",
    )
    for name, value in (
        ("trainer.eval_every", t.eval_every),
        ("trainer.save_every", t.save_every),
        ("trainer.log_completions", t.log_completions),
        ("trainer.torch_threads", t.torch_threads),
        ("optim.warmup_steps", o.warmup_steps),
        ("optim.max_nonfinite_grad_steps", o.max_nonfinite_grad_steps),
    ):
        _require(value >= 0, f"{name}={value} must be >= 0 (0 turns it off).")
    _require(
        bool(_DEVICE.match(t.device)),
        f"trainer.device='{t.device}' is not a device Kelvin can train on; use auto, cpu, cuda or cuda:N.",
    )
    for name, beta in (("optim.adam_beta1", o.adam_beta1), ("optim.adam_beta2", o.adam_beta2)):
        _require(0 <= beta < 1, f"{name}={beta} must be in [0, 1); AdamW's defaults are 0.9 and 0.999.")
    _require(o.weight_decay >= 0, f"optim.weight_decay={o.weight_decay} must be >= 0.")
    _require(o.max_grad_norm >= 0, f"optim.max_grad_norm={o.max_grad_norm} must be >= 0 (0 disables clipping).")
    _require(c.loss.dynamic_sampling_max_rounds >= 0, "loss.dynamic_sampling_max_rounds must be >= 0.")
    _temperature("sampling.temperature", s.temperature)
    _temperature("trainer.eval_temperature", t.eval_temperature, greedy_zero=True)


def _validate_controller_temperatures(c: KelvinConfig) -> None:
    """Every controller section's temperature fields, found by name (sections live beside their controllers), after
    the section's own checks (whose messages are more specific)."""
    section = controller_section(c)
    for f in dataclasses.fields(section):
        if _TEMPERATURE_FIELD.match(f.name):
            value = getattr(section, f.name)
            values = value if isinstance(value, list) else [value]
            for i, x in enumerate(values):
                if isinstance(x, float):
                    suffix = f"[{i}]" if isinstance(value, list) else ""
                    _temperature(f"controller.{c.controller.name}.{f.name}{suffix}", x)


def validate(c: KelvinConfig) -> None:
    """Cross-field checks. Each message: field, value, fix."""
    s, loss, t, o = c.sampling, c.loss, c.trainer, c.optim
    _validate_ranges(c)
    _require(0 < s.top_p <= 1, f"sampling.top_p={s.top_p} must be in (0, 1]; 1.0 disables nucleus sampling.")
    _require(s.top_k >= 0, f"sampling.top_k={s.top_k} must be >= 0; 0 disables top-k.")
    _require(
        s.num_generations >= 2,
        f"sampling.num_generations={s.num_generations} must be >= 2: group-relative "
        "advantages need at least two completions per prompt.",
    )
    _require(s.max_completion_length >= 1, f"sampling.max_completion_length={s.max_completion_length} must be >= 1.")
    _require(s.batch_size >= 0, f"sampling.batch_size={s.batch_size} must be >= 0 (0 = whole batch).")
    if s.batch_size:
        _require(
            s.batch_size % s.num_generations == 0,
            f"sampling.batch_size={s.batch_size} must be a multiple of sampling.num_generations="
            f"{s.num_generations} so that groups are sampled together.",
        )
    _validate_engine(c)
    _require(t.steps >= 1, f"trainer.steps={t.steps} must be >= 1.")
    _require(t.prompts_per_step >= 1, f"trainer.prompts_per_step={t.prompts_per_step} must be >= 1.")
    _require(t.micro_batch_size >= 1, f"trainer.micro_batch_size={t.micro_batch_size} must be >= 1.")
    validate_layout(c, t.num_processes)
    _require(
        t.sharding == "none" or c.model.lora_r == 0,
        f"trainer.sharding={t.sharding!r} with model.lora_r={c.model.lora_r}: LoRA adapters are small enough to "
        "replicate; shard full fine-tuning only (set trainer.sharding=none, or model.lora_r=0).",
    )
    _require(t.keep_last >= 1, f"trainer.keep_last={t.keep_last} must be >= 1.")
    _require(t.eval_temperature >= 0, f"trainer.eval_temperature={t.eval_temperature} must be >= 0 (0 = greedy).")
    _require(0 <= loss.epsilon < 1, f"loss.epsilon={loss.epsilon} must be in [0, 1); PPO/GRPO use 0.2.")
    if loss.epsilon_high is not None:
        _require(loss.epsilon_high >= 0, f"loss.epsilon_high={loss.epsilon_high} must be >= 0 (DAPO uses 0.28).")
    _require(loss.beta >= 0, f"loss.beta={loss.beta} must be >= 0 (0 = no KL, no reference model).")
    _require(loss.num_iterations >= 1, f"loss.num_iterations={loss.num_iterations} must be >= 1.")
    _require(o.learning_rate > 0, f"optim.learning_rate={o.learning_rate} must be > 0.")
    _require(0 <= o.min_lr_ratio <= 1, f"optim.min_lr_ratio={o.min_lr_ratio} must be in [0, 1].")
    _require(
        c.task.min_digits >= 1 and c.task.max_digits >= c.task.min_digits,
        f"task.min_digits={c.task.min_digits}, task.max_digits={c.task.max_digits}: need 1 <= min <= max.",
    )
    _require(
        c.task.eval_split == "test" or c.task.name == "arithmetic",
        f"task.eval_split={c.task.eval_split!r} is only offered by the arithmetic task (task.name={c.task.name!r}); "
        "use task.eval_split=test.",
    )
    _validate_task(c)
    if c.model.path is not None:
        _require(
            Path(c.model.path).is_dir(),
            f"model.path='{c.model.path}' is not a folder. Point it at a local Hugging Face model folder "
            "(with config.json), or leave it empty to use model.tiny; `kelvin models install` makes one.",
        )
    if c.reward.weights:
        n = 1 + len(c.reward.functions)
        _require(
            len(c.reward.weights) == n,
            f"reward.weights has {len(c.reward.weights)} entries but there are {n} "
            "rewards (the verifier + reward.functions); give one weight each or none.",
        )
    _require(c.reward.timeout_s > 0, f"reward.timeout_s={c.reward.timeout_s} must be > 0.")
    controller_section(c).validate(s)
    _validate_controller_temperatures(c)


def validate_layout(c: KelvinConfig, num_processes: int) -> None:
    """How the rollout batch splits over processes and micro-batches; every micro-batch must be full.

    Each process samples whole groups, (prompts_per_step / num_processes) x num_generations rows, and cuts them into
    micro-batches. An uneven cut (12 rows into 8 + 4) silently re-weights rows under the per-micro-batch normalisers
    (grpo, bnpo, dr_grpo), so it is refused. Called with the configured count and again with the launched one.
    """
    t, g = c.trainer, c.sampling.num_generations
    _require(
        num_processes >= 1, f"trainer.num_processes={num_processes} must be >= 1 (1 = a single process, no launch)."
    )
    _require(
        t.prompts_per_step % num_processes == 0,
        f"trainer.prompts_per_step={t.prompts_per_step} must be divisible by trainer.num_processes={num_processes} "
        f"(each process samples whole groups); e.g. trainer.prompts_per_step="
        f"{max(num_processes, t.prompts_per_step // num_processes * num_processes)}.",
    )
    rows = t.prompts_per_step // num_processes * g
    _require(
        rows % t.micro_batch_size == 0,
        f"trainer.micro_batch_size={t.micro_batch_size} must divide each process's rollout rows: "
        f"(trainer.prompts_per_step={t.prompts_per_step} / trainer.num_processes={num_processes}) x "
        f"sampling.num_generations={g} = {rows}; an uneven last micro-batch would re-weight its rows. "
        f"Use e.g. trainer.micro_batch_size={_largest_divisor(rows, t.micro_batch_size)}.",
    )


def _validate_engine(c: KelvinConfig) -> None:
    """sampling.engine and its vllm_* settings (which controllers an engine serves is the engine's own check)."""
    s = c.sampling
    if s.vllm_importance_sampling_cap is not None:
        _require(
            s.vllm_importance_sampling_clip_max in (None, 3.0, s.vllm_importance_sampling_cap),
            f"sampling.vllm_importance_sampling_cap={s.vllm_importance_sampling_cap} and "
            f"sampling.vllm_importance_sampling_clip_max={s.vllm_importance_sampling_clip_max} disagree: the cap is "
            "the old name of clip_max; set only vllm_importance_sampling_clip_max.",
        )
        s.vllm_importance_sampling_clip_max = s.vllm_importance_sampling_cap
        s.vllm_importance_sampling_cap = None
    low, high = s.vllm_importance_sampling_clip_min, s.vllm_importance_sampling_clip_max
    _require(high is None or high > 0, f"sampling.vllm_importance_sampling_clip_max={high} must be > 0 (TRL: 3.0).")
    _require(low is None or low >= 0, f"sampling.vllm_importance_sampling_clip_min={low} must be >= 0 or null.")
    _require(
        low is None or high is None or low < high,
        f"sampling.vllm_importance_sampling_clip_min={low} must be below vllm_importance_sampling_clip_max={high}.",
    )
    _require(
        0 < s.vllm_gpu_memory_utilization <= 1,
        f"sampling.vllm_gpu_memory_utilization={s.vllm_gpu_memory_utilization} must be in (0, 1] (TRL: 0.3).",
    )
    _require(
        s.vllm_tensor_parallel_size >= 1,
        f"sampling.vllm_tensor_parallel_size={s.vllm_tensor_parallel_size} must be >= 1.",
    )
    if s.vllm_max_model_length is not None:
        need = s.max_prompt_length + s.max_completion_length
        _require(
            s.vllm_max_model_length >= need,
            f"sampling.vllm_max_model_length={s.vllm_max_model_length} is shorter than max_prompt_length + "
            f"max_completion_length = {need}; raise it or leave it null.",
        )
    if s.engine != "vllm":
        return
    _require(
        s.vllm_tensor_parallel_size == 1 or c.trainer.num_processes == 1,
        f"sampling.vllm_tensor_parallel_size={s.vllm_tensor_parallel_size} with trainer.num_processes="
        f"{c.trainer.num_processes}: one tensor-parallel engine shared by several training processes (TRL gathers "
        "each group's prompts) is not built; use vllm_tensor_parallel_size=1 (an engine per process) or one process.",
    )
    _require(
        c.trainer.sharding == "none",
        f"sampling.engine=vllm with trainer.sharding={c.trainer.sharding!r}: syncing sharded weights into vLLM is "
        "not built yet; use trainer.sharding=none (DDP), or sampling.engine=kelvin.",
    )


def _validate_task(c: KelvinConfig) -> None:
    task = c.task
    if task.name != "dataset":
        return
    _require(
        bool(task.path),
        "task.name=dataset needs task.path: a .jsonl/.json/.csv/.parquet file or a save_to_disk folder, "
        "e.g. task.path=examples/arithmetic_words.jsonl.",
    )
    _require(
        bool(task.test_path) or task.test_size > 0,
        f"task.test_size={task.test_size} with no task.test_path leaves no held-out set; set task.test_size "
        "(a fraction such as 0.1, or a row count) or task.test_path.",
    )
    _require(
        task.test_size < 1 or float(task.test_size).is_integer(),
        f"task.test_size={task.test_size}: a fraction must be in (0, 1) and a row count a whole number.",
    )
    _require(
        task.verifier == "none" or bool(task.answer_column),
        f"task.verifier={task.verifier} needs task.answer_column (the gold answers); or set task.verifier=none "
        "and give reward.functions.",
    )
    _require(
        task.verifier != "none" or bool(c.reward.functions),
        "task.verifier=none leaves no reward: add reward.functions (e.g. reward.functions=[my_rewards.py:score]) "
        "or choose task.verifier=math or exact.",
    )


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def explain(cls: type = KelvinConfig, prefix: str = "") -> list[str]:
    """Every field as 'section.field = default  # help' lines, for `kelvin config --explain`."""
    lines: list[str] = []
    types_ = _field_types(cls)
    instance = cls()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(types_[f.name]):
            lines.extend(explain(types_[f.name], f"{prefix}{f.name}."))
        else:
            lines.append(f"{prefix}{f.name} = {getattr(instance, f.name)!r}  # {f.metadata.get('help', '')}")
    return lines
