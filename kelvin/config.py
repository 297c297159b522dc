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
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


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
    name: Literal["arithmetic", "gsm8k", "aime24", "amc23", "math500", "minerva_math", "olympiadbench"] = doc(
        "arithmetic",
        "Which task supplies prompts and the verifier. 'arithmetic': the embedded addition task with a "
        "digit-by-digit working-out format. 'gsm8k': GSM8K word problems (answer after '####'; prompts ask for "
        "the final answer in \\boxed{}). A benchmark name (aime24, amc23, math500, minerva_math, olympiadbench) "
        "trains on that benchmark's rows in file order and evaluates on all of them.",
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
    data_path: str | None = doc(
        None,
        "gsm8k: folder holding train.jsonl and test.jsonl (default: ../shared/data/gsm8k next to the repo). "
        "Benchmarks: the .jsonl file, its folder, or a data root holding math_eval/ (default: ../shared/data).",
    )
    chat_template: bool = doc(
        True, "Wrap prompts in the tokenizer's chat template when it has one (real instruct models)."
    )
    system_prompt: str | None = doc(None, "Optional system message for chat-template prompts.")
    eval_size: int = doc(
        256, "Held-out prompts used for accuracy evaluation during training (arithmetic, gsm8k; benchmarks use all)."
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


@dataclass
class FixedControllerConfig:
    pass


@dataclass
class ScheduleControllerConfig:
    kind: Literal["linear", "cosine", "staged"] = doc(
        "linear", "Step schedule of the batch temperature. linear is TAMPO's heuristic baseline (0.9 -> 1.5)."
    )
    start: float = doc(0.9, "Temperature at step 0 (linear, cosine).")
    end: float = doc(1.5, "Temperature at the last step (linear, cosine).")
    stages: list[float] = doc([1.4, 1.45, 1.5], "staged (POLARIS): temperatures of equal-length stages.")
    stage_steps: list[int] = doc([], "staged: the steps at which each later stage begins; empty splits evenly.")


@dataclass
class EntropyTargetControllerConfig:
    target: float = doc(
        0.0,
        "Target mean token entropy H* (nats, measured at T=1). 0 means: the entropy of the first batch "
        "times `target_ratio`.",
    )
    target_ratio: float = doc(1.0, "H* = ratio x first-step entropy when `target` is 0.")
    gain: float = doc(0.5, "eta in T <- clip(T * exp(eta * (H* - H)), T_min, T_max).")
    min_temperature: float = doc(0.5, "Lower clip of the controlled temperature.")
    max_temperature: float = doc(2.0, "Upper clip of the controlled temperature.")


@dataclass
class EADControllerConfig:
    tau_max: float = doc(1.2, "EAD (arXiv 2510.05251): tau_t = max(1 + tau_max - e^{t/d}, tau_min).")
    tau_min: float = doc(0.1, "EAD: lowest temperature reached late in a sequence.")
    d0: float = doc(40.0, "EAD: initial decay length d_0 (tokens).")
    d_growth: float = doc(5.0, "EAD: d_s = min(d_0 + growth * step, d_max): later steps anneal more slowly.")
    d_max: float = doc(40000.0, "EAD: cap on d_s.")
    warm_tokens: int = doc(0, "EAD: the first c generated tokens are sampled at T=1 (template tokens).")


@dataclass
class EDTControllerConfig:
    t0: float = doc(1.0, "EDT (arXiv 2403.14541): T_t = T0 * N^(theta / H_t); T0 is the highest temperature.")
    n: float = doc(0.8, "EDT: base N (<1) of the exponent.")
    theta: float = doc(0.2, "EDT: scale theta > 0; larger theta cools confident tokens harder.")
    min_temperature: float = doc(0.05, "EDT: floor on T_t (H_t -> 0 sends T_t -> 0).")


@dataclass
class TAMPOControllerConfig:
    candidates: list[float] = doc(
        [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5],
        "TAMPO (arXiv 2602.11779): candidate temperatures {0.6, ..., 1.5}, K=10 in the paper.",
    )
    ema_alpha: float = doc(0.05, "TAMPO: EMA coefficient alpha of the temperature advantages (paper: 0.05 best).")
    top_p: float = doc(0.7, "TAMPO: nucleus threshold of the meta-policy draw (paper: 0.7 best; 0 = argmax).")
    sparsemax_scale: float = doc(
        1.0,
        "TAMPO: multiply the per-token mean log-likelihoods by this before sparsemax (not in the paper; "
        "sparsemax is not scale-invariant).",
    )
    warmup_steps: int = doc(0, "TAMPO: steps of uniform draws over the candidates before the meta-policy is used.")
    vocab_chunk: int = doc(8192, "TAMPO: vocabulary chunk for the virtual-temperature logsumexp (memory bound).")
    seed: int = doc(0, "TAMPO: seed of the meta-policy's own random generator.")


@dataclass
class IntrospectiveControllerConfig:
    tau_min: float = doc(0.5, "IntroLLM (arXiv 2602.13035): lowest temperature the head can pick.")
    tau_max: float = doc(1.5, "IntroLLM: highest temperature the head can pick.")
    tau0: float = doc(1.0, "IntroLLM: temperature before the first resample (tau_0).")
    beta_eps: float = doc(1e-3, "IntroLLM: eps in Beta(softplus(u_a)+eps, softplus(u_b)+eps).")
    init_gate_prob: float = doc(0.05, "IntroLLM: initial gate probability sigma(u_c) of a fresh head.")
    init_concentration: float = doc(
        20.0, "IntroLLM: initial alpha+beta of the Beta; high = resampled temperatures close to tau0."
    )
    learning_rate: float = doc(1e-3, "IntroLLM: AdamW learning rate of the head (its own optimizer).")
    epsilon: float = doc(0.2, "IntroLLM: clip range of the head's ratio in the phi phase.")
    theta_steps: int = doc(1, "IntroLLM: coordinate ascent block of token-policy (theta) steps.")
    phi_steps: int = doc(1, "IntroLLM: coordinate ascent block of temperature-head (phi) steps.")
    joint: bool = doc(
        False, "IntroLLM: update theta and phi on every step from the same batch instead of alternating blocks."
    )
    phi_iterations: int = doc(
        1,
        "IntroLLM: optimizer passes of the head over each phi-step batch (PPO epochs). With 1 the head ratio is 1 "
        "and the clip never binds; more passes reuse the batch and let `epsilon` matter.",
    )
    seed: int = doc(0, "IntroLLM: seed of the head's initialisation and of its gate / Beta sampling generator.")


@dataclass
class ControllerConfig:
    name: Literal["fixed", "schedule", "entropy_target", "ead", "edt", "tampo", "introspective"] = doc(
        "fixed", "Which temperature controller chooses the sampling temperature (DESIGN section 4)."
    )
    fixed: FixedControllerConfig = field(default_factory=FixedControllerConfig)
    schedule: ScheduleControllerConfig = field(default_factory=ScheduleControllerConfig)
    entropy_target: EntropyTargetControllerConfig = field(default_factory=EntropyTargetControllerConfig)
    ead: EADControllerConfig = field(default_factory=EADControllerConfig)
    edt: EDTControllerConfig = field(default_factory=EDTControllerConfig)
    tampo: TAMPOControllerConfig = field(default_factory=TAMPOControllerConfig)
    introspective: IntrospectiveControllerConfig = field(default_factory=IntrospectiveControllerConfig)


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
    lr_scheduler: Literal["constant", "cosine"] = doc("constant", "Learning-rate schedule over `trainer.steps`.")
    min_lr_ratio: float = doc(0.0, "cosine: final lr = ratio x learning_rate (TAMPO: 0.1).")
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
    tensorboard: bool = doc(True, "Write TensorBoard events under <output_dir>/tensorboard.")


@dataclass
class KelvinConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
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


def _set_dotted(tree: dict[str, Any], dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"Override '{dotted}': '{part}' is a value, not a section.")
    node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""


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
        try:
            _set_dotted(tree, key.strip(), raw.strip())
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"Override '{item}': the value is not valid YAML ({problem}); quote it.") from None
    config = _build(KelvinConfig, tree, "")
    validate(config)
    return config


def config_from_dict(tree: dict[str, Any]) -> KelvinConfig:
    config = _build(KelvinConfig, tree, "")
    validate(config)
    return config


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
    ctl = c.controller
    named = {
        "schedule": [("start", ctl.schedule.start), ("end", ctl.schedule.end)]
        + [(f"stages[{i}]", x) for i, x in enumerate(ctl.schedule.stages)],
        "entropy_target": [
            ("min_temperature", ctl.entropy_target.min_temperature),
            ("max_temperature", ctl.entropy_target.max_temperature),
        ],
        "ead": [("tau_max", ctl.ead.tau_max), ("tau_min", ctl.ead.tau_min)],
        "edt": [("t0", ctl.edt.t0), ("min_temperature", ctl.edt.min_temperature)],
        "tampo": [(f"candidates[{i}]", x) for i, x in enumerate(ctl.tampo.candidates)],
        "introspective": [
            ("tau_min", ctl.introspective.tau_min),
            ("tau_max", ctl.introspective.tau_max),
            ("tau0", ctl.introspective.tau0),
        ],
    }
    for field_name, value in named.get(ctl.name, []):
        _temperature(f"controller.{ctl.name}.{field_name}", value)


def validate(c: KelvinConfig) -> None:
    """Cross-field checks. Each message: field, value, fix."""
    s, loss, t, o, ctl = c.sampling, c.loss, c.trainer, c.optim, c.controller
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
    _require(t.steps >= 1, f"trainer.steps={t.steps} must be >= 1.")
    _require(t.prompts_per_step >= 1, f"trainer.prompts_per_step={t.prompts_per_step} must be >= 1.")
    _require(t.micro_batch_size >= 1, f"trainer.micro_batch_size={t.micro_batch_size} must be >= 1.")
    _require(
        c.rollout_batch_size % t.micro_batch_size == 0,
        f"trainer.micro_batch_size={t.micro_batch_size} must divide the rollout batch "
        f"(prompts_per_step x num_generations = {c.rollout_batch_size}); e.g. "
        f"trainer.micro_batch_size={_largest_divisor(c.rollout_batch_size, t.micro_batch_size)}.",
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
    if ctl.name == "tampo":
        tp = ctl.tampo
        _require(
            len(tp.candidates) >= 2 and all(x > 0 for x in tp.candidates),
            f"controller.tampo.candidates={tp.candidates} needs >= 2 positive temperatures.",
        )
        _require(0 < tp.ema_alpha <= 1, f"controller.tampo.ema_alpha={tp.ema_alpha} must be in (0, 1].")
        _require(0 <= tp.top_p <= 1, f"controller.tampo.top_p={tp.top_p} must be in [0, 1] (0 = argmax).")
        _require(
            len(set(tp.candidates)) == len(tp.candidates),
            f"controller.tampo.candidates={tp.candidates} has duplicates; list each temperature once.",
        )
        _require(tp.sparsemax_scale > 0, f"controller.tampo.sparsemax_scale={tp.sparsemax_scale} must be > 0.")
        _require(tp.warmup_steps >= 0, f"controller.tampo.warmup_steps={tp.warmup_steps} must be >= 0.")
        _require(tp.vocab_chunk >= 1, f"controller.tampo.vocab_chunk={tp.vocab_chunk} must be >= 1 (e.g. 8192).")
    if ctl.name == "introspective":
        ip = ctl.introspective
        _require(
            0 < ip.tau_min < ip.tau_max,
            f"controller.introspective tau_min={ip.tau_min}, tau_max={ip.tau_max}: need 0 < tau_min < tau_max.",
        )
        _require(
            ip.tau_min <= ip.tau0 <= ip.tau_max,
            f"controller.introspective.tau0={ip.tau0} must lie in [tau_min, tau_max] = [{ip.tau_min}, {ip.tau_max}].",
        )
        _require(
            0 < ip.init_gate_prob < 1,
            f"controller.introspective.init_gate_prob={ip.init_gate_prob} must be in (0, 1); e.g. 0.05.",
        )
        _require(
            ip.init_concentration > 0 and ip.beta_eps > 0,
            f"controller.introspective init_concentration={ip.init_concentration}, beta_eps={ip.beta_eps}: "
            "both must be > 0 (e.g. 20 and 1e-3).",
        )
        _require(
            ip.learning_rate > 0, f"controller.introspective.learning_rate={ip.learning_rate} must be > 0; e.g. 1e-3."
        )
        _require(0 <= ip.epsilon < 1, f"controller.introspective.epsilon={ip.epsilon} must be in [0, 1); e.g. 0.2.")
        _require(
            ip.theta_steps >= 0 and ip.phi_steps >= 0 and ip.theta_steps + ip.phi_steps >= 1,
            f"controller.introspective theta_steps={ip.theta_steps}, phi_steps={ip.phi_steps}: both must be >= 0 "
            "with at least one step per cycle (phi_steps=0 never trains the head; theta_steps=0 freezes the model).",
        )
        _require(
            ip.phi_iterations >= 1,
            f"controller.introspective.phi_iterations={ip.phi_iterations} must be >= 1.",
        )
    if ctl.name == "schedule" and ctl.schedule.kind != "staged":
        _require(
            ctl.schedule.start > 0 and ctl.schedule.end > 0,
            f"controller.schedule start={ctl.schedule.start}, end={ctl.schedule.end} must be > 0.",
        )
    if ctl.name == "schedule" and ctl.schedule.kind == "staged":
        _require(
            len(ctl.schedule.stages) >= 1 and all(x > 0 for x in ctl.schedule.stages),
            f"controller.schedule.stages={ctl.schedule.stages} needs positive temperatures.",
        )
        _require(
            not ctl.schedule.stage_steps or len(ctl.schedule.stage_steps) == len(ctl.schedule.stages) - 1,
            f"controller.schedule.stage_steps={ctl.schedule.stage_steps} needs len(stages)-1 entries.",
        )
    if ctl.name == "edt":
        _require(
            0 < ctl.edt.n < 1 and ctl.edt.theta > 0,
            f"controller.edt n={ctl.edt.n}, theta={ctl.edt.theta}: need 0 < n < 1 and theta > 0.",
        )
    if ctl.name == "ead":
        _require(
            ctl.ead.tau_max > 0 and ctl.ead.tau_min > 0 and ctl.ead.d0 > 0,
            "controller.ead tau_max, tau_min and d0 must be > 0.",
        )
    if ctl.name == "entropy_target":
        et = ctl.entropy_target
        _require(
            0 < et.min_temperature <= et.max_temperature,
            f"controller.entropy_target min/max temperature {et.min_temperature}/{et.max_temperature} invalid.",
        )
        _require(
            et.min_temperature <= s.temperature <= et.max_temperature,
            f"sampling.temperature={s.temperature} is the entropy controller's starting point: put it inside "
            f"[controller.entropy_target.min_temperature, max_temperature] = "
            f"[{et.min_temperature}, {et.max_temperature}].",
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
