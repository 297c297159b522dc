"""`kelvin eval MODEL --temperature learned`: the saved temperature head drives sampling; no head is a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kelvin.controllers.introspective import IntrospectiveController, IntrospectiveControllerConfig, save_head
from kelvin.eval.cli import main, parse_temperatures
from kelvin.eval.evaluation import evaluate
from kelvin.models.loading import build_tiny_model, load_pretrained, save_pretrained
from kelvin.tasks.arithmetic import arithmetic_task

HIDDEN = 128  # the "1m" tiny model's width
ARGS = ["--benchmarks", "arithmetic", "--limit", "3", "--k", "2", "--max-new-tokens", "10", "--save-completions"]


@pytest.fixture(scope="module")
def model_with_head(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    folder = tmp_path_factory.mktemp("with-head")
    save_pretrained(build_tiny_model("1m", len(tokenizer), seed=0).eval(), tokenizer, folder)
    # A head whose gate often fires and whose taus spread over [0.5, 1.5]: it samples unlike any fixed T.
    head_cfg = IntrospectiveControllerConfig(init_gate_prob=0.5, init_concentration=3.0, tau_min=0.5, tau_max=1.5)
    save_head(IntrospectiveController(head_cfg, HIDDEN).head, folder)
    return folder


def _completions(payload: dict, setting: str) -> list[list[str]]:
    (result,) = [r for r in payload["results"] if r["setting"] == setting]
    return [p["completions"] for p in result["problems"]]


def test_learned_temperature_uses_the_saved_head(model_with_head: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    assert main([str(model_with_head), *ARGS, "--temperature", "learned,1.0", "--output", str(out)]) == 0
    payload = json.loads(out.read_text())
    learned = _completions(payload, "controller:introspective")

    # The same evaluation done by hand with the head loaded directly: identical samples (same seed).
    model, tokenizer = load_pretrained(model_with_head)
    task = arithmetic_task(eval_size=3)
    controller = IntrospectiveController.from_pretrained(model_with_head, seed=0)
    direct = evaluate(
        model, tokenizer, task.test, task.verify, task.extract, k=2, max_new_tokens=10, controller=controller,
        keep_completions=True, seed=0,
    )  # fmt: skip
    assert learned == [p.completions for p in direct.problems]
    assert learned != _completions(payload, "T=1")  # the head's taus are not the fixed T=1 run's


def test_learned_without_a_head_is_a_clear_error(tmp_path: Path, tokenizer, capsys: pytest.CaptureFixture) -> None:
    save_pretrained(build_tiny_model("1m", len(tokenizer), seed=0), tokenizer, tmp_path)
    assert main([str(tmp_path), *ARGS, "--temperature", "learned"]) == 2
    message = capsys.readouterr().err
    assert "has no temperature head" in message and "fixed temperature such as 0.6" in message


def test_parse_temperatures() -> None:
    assert parse_temperatures("0.6") == (False, [0.6])
    assert parse_temperatures("learned, 0,1.0") == (True, [0.0, 1.0])
    assert parse_temperatures("learned") == (True, [])
    with pytest.raises(ValueError, match="learned"):
        parse_temperatures("lerned")
    for bad in ("-1", "1e-5", "learned,1000"):  # outside [0.001, 100] (0 = greedy): float32 logits would overflow
        with pytest.raises(ValueError, match=r"\[0.001, 100\]"):
            parse_temperatures(bad)
