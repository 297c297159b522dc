"""Load Hugging Face causal LMs from local folders, and build the tiny character-level models.

Nothing here touches the network: `from_pretrained` always runs with `local_files_only=True`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAR_VOCAB = "0123456789+-*=|>.,:;?!()/ abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ#$%'\"\n"
SPECIALS = ["<pad>", "<s>", "</s>"]


@dataclass(frozen=True)
class TinySize:
    hidden: int
    layers: int
    heads: int
    ffn: int


TINY_SIZES = {
    "1m": TinySize(hidden=128, layers=4, heads=4, ffn=512),
    "10m": TinySize(hidden=384, layers=6, heads=6, ffn=1024),
}


def build_char_tokenizer(chars: str = CHAR_VOCAB) -> PreTrainedTokenizerFast:
    """A real Hugging Face fast tokenizer with one token per character (saves and loads like any other).

    Unknown characters map to <pad> (id 0); every sequence starts with <s>.
    """
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<pad>"
    )
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_model(size: str, vocab_size: int, seed: int = 0, max_positions: int = 256) -> LlamaForCausalLM:
    """A randomly initialised Llama-architecture model of a named size ('1m' ~1.1M params, '10m' ~10.7M)."""
    if size not in TINY_SIZES:
        raise ValueError(f"model.tiny size '{size}' is unknown; choose one of {sorted(TINY_SIZES)}.")
    s = TINY_SIZES[size]
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        num_key_value_heads=s.heads,
        intermediate_size=s.ffn,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_model_folder(path: str | Path, setting: str = "model.path") -> Path:
    """Check a model folder before any work: config.json readable JSON, weights present and readable, tokenizer
    present. Raises FileNotFoundError naming the file and the fix (instead of transformers' misleading messages, e.g.
    "You need to have sentencepiece or tiktoken installed" for a folder without tokenizer files)."""
    folder = Path(path)
    fix = "Use a folder written by save_pretrained (or `kelvin models install`)."
    if not folder.is_dir():
        raise FileNotFoundError(f"{setting}='{path}' is not a folder. {fix}")
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{setting}='{path}' has no config.json: it is not a Hugging Face model folder. {fix}")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FileNotFoundError(f"{config} is not readable JSON ({err}); restore the file. {fix}") from None
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        raise FileNotFoundError(f"{setting}='{path}' has no weights (none of {', '.join(WEIGHT_FILES)}). {fix}")
    try:
        if weights[0].name == "model.safetensors":
            with safe_open(str(weights[0]), framework="pt"):
                pass  # reads and checks the header only
        else:
            with weights[0].open("rb") as handle:
                handle.read(1)
    except Exception as err:  # safetensors raises its own error types for a torn or foreign file
        raise FileNotFoundError(f"{weights[0]} is not readable weights ({err}); restore the file. {fix}") from None
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"{setting}='{path}' has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); copy the tokenizer files "
            f"of the model into the folder. {fix}"
        )
    return folder


class ModelLoadError(RuntimeError):
    """A model folder passed the file checks but transformers cannot load it; the message names the folder."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def load_pretrained(path: str | Path, dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, object]:
    """A causal LM and its tokenizer from a local folder; raises a clear error if the folder is not a model."""
    folder = check_model_folder(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # transformers' errors here are often misleading (e.g. KeyError: 'added_tokens')
        raise ModelLoadError(
            f"model folder {folder}: the tokenizer does not load ({type(err).__name__}: {_first_line(err)}); "
            "check tokenizer.json / tokenizer_config.json, or copy the model's own tokenizer files into the folder"
        ) from err
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    except Exception as err:
        raise ModelLoadError(
            f"model folder {folder}: the model does not load ({type(err).__name__}: {_first_line(err)}); check "
            "config.json and the weights files"
        ) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return model, tokenizer


def save_pretrained(model: torch.nn.Module, tokenizer: object, folder: str | Path) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def eos_ids(model: torch.nn.Module, tokenizer: object) -> list[int]:
    """Every token id that ends a completion: the tokenizer's EOS plus the model's generation_config EOS ids."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif isinstance(extra, (list, tuple)):
        ids.update(int(x) for x in extra)
    return sorted(ids)
