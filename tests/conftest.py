"""Shared fixtures: tiny models built locally, nothing from the network."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from kelvin.models.loading import build_char_tokenizer, build_tiny_model


@pytest.fixture(scope="session")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    """A randomly initialised ~1M Llama: enough for invariants and mechanics (not for learning)."""
    model = build_tiny_model("1m", vocab_size=len(tokenizer), seed=0)
    model.eval()
    return model


@pytest.fixture(scope="session")
def warm_model_dir():
    """The warmed-up embedded model, from the same hash-keyed cache the CLI uses (built once, ~1.5 min on 2 cores)."""
    from kelvin.models.warmup import WarmupRecipe, warmed_up_model_path

    return warmed_up_model_path(WarmupRecipe(), quiet=True)


@pytest.fixture
def prompts(tokenizer):
    enc = tokenizer(["12+3=", "347+58=", "9+9=", "1000+2345="] * 2, return_tensors="pt", padding=True)
    return enc.input_ids, enc.attention_mask


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `vllm` need vLLM (`make test-vllm` builds .venv-vllm for them). Without it they are skipped, with
    the reason in the summary; with KELVIN_REQUIRE_VLLM=1 (make test-vllm, CI) a missing vLLM is an error instead."""
    marked = [item for item in items if "vllm" in item.keywords]
    if not marked or importlib.util.find_spec("vllm") is not None:
        return
    if os.environ.get("KELVIN_REQUIRE_VLLM") == "1":
        raise pytest.UsageError("KELVIN_REQUIRE_VLLM=1 but vllm cannot be imported: see docs/vllm.md for the install.")
    skip = pytest.mark.skip(reason="vLLM is not installed in this environment: `make test-vllm` runs these")
    for item in marked:
        item.add_marker(skip)
