"""Hostile and mistaken inputs through every command (issue 13): each gives the right exit code, one clear line naming
the field or file, no traceback, and never costs the earlier run in the output folder.

Every probe runs in-process through `kelvin.cli.main` and fails before any model is loaded, so the table is fast.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from kelvin.cli import main
from kelvin.config import load_config, to_dict
from kelvin.rl.run_folder import LOCK_FILE

EARLIER_ROWS = '{"step": 0, "eval/accuracy": 0.5}\n{"step": 1, "reward": 0.5}\n'


@dataclass
class Probe:
    name: str
    argv: list[str]  # {run}: a folder holding an earlier run; {tmp}: a scratch folder; {recipe}: the probe's file
    code: int
    says: list[str]  # substrings the error must contain (the field, the file, the fix)
    setup: Callable[[Path], None] | None = None
    recipe: bytes | None = None  # written to {tmp}/recipe.yaml
    stream: str = "err"
    extra: dict = field(default_factory=dict)


def _earlier_run(run: Path) -> None:
    """A finished run as far as these probes can tell: logs, config and a complete checkpoint with its state."""
    (run / "checkpoints" / "step-000001").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(EARLIER_ROWS)
    (run / "config.yaml").write_text("trainer:\n  steps: 1\n")
    config = load_config(None, ["trainer.steps=1"])
    torch.save({"step": 1, "config": to_dict(config)}, run / "checkpoints" / "step-000001" / "state.pt")
    (run / "checkpoints" / "step-000001" / "COMPLETE").write_text("1")


def _model_folder(tmp: Path, *, config: str | None = "{}", weights: bytes | None = b"", tokenizer: bool = True) -> Path:
    folder = tmp / "model"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config)
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


def _no_tokenizer(tmp: Path) -> None:
    from safetensors.torch import save_file

    folder = _model_folder(tmp, weights=None, tokenizer=False)
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))


def _live_lock(run: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (run / LOCK_FILE).write_text(str(holder.pid))
    _live_lock.holders.append(holder)


_live_lock.holders = []

TRAIN = ["train", "--output-dir", "{run}", "--overwrite"]  # the most dangerous flag: nothing may be lost anyway
TRAIN_RECIPE = ["train", "{recipe}", "--output-dir", "{run}", "--overwrite"]  # the probe's recipe file

PROBES = [
    # config values (damage 3 and 9)
    Probe("nan entropy_coef", [*TRAIN, "loss.entropy_coef=nan"], 2, ["loss.entropy_coef", "finite"]),
    Probe("inf learning rate", [*TRAIN, "optim.learning_rate=inf"], 2, ["optim.learning_rate", "finite"]),
    Probe("float32 overflow", [*TRAIN, "optim.learning_rate=1e39"], 2, ["optim.learning_rate", "float32"]),
    Probe("temperature inf", [*TRAIN, "sampling.temperature=inf"], 2, ["sampling.temperature"]),
    Probe("temperature 1e-50", [*TRAIN, "sampling.temperature=1e-50"], 2, ["sampling.temperature", "0.001"]),
    Probe("negative max_prompt_length", [*TRAIN, "sampling.max_prompt_length=-1"], 2, ["max_prompt_length"]),
    Probe("negative eval_every", [*TRAIN, "trainer.eval_every=-2"], 2, ["trainer.eval_every", ">= 0"]),
    Probe("negative save_every", [*TRAIN, "trainer.save_every=-1"], 2, ["trainer.save_every"]),
    Probe("device tpu", [*TRAIN, "trainer.device=tpu"], 2, ["trainer.device", "cpu"]),
    Probe("adam_beta1 2.0", [*TRAIN, "optim.adam_beta1=2.0"], 2, ["optim.adam_beta1", "[0, 1)"]),
    Probe("eval_size 0", [*TRAIN, "task.eval_size=0"], 2, ["task.eval_size"]),
    Probe("unknown tiny model", [*TRAIN, "model.tiny=arithmetic-5m"], 2, ["model.tiny", "arithmetic-1m"]),
    Probe("negative warm-up", [*TRAIN, "model.warmup_steps=-1"], 2, ["model.warmup_steps"]),
    Probe("nan reward time limit", [*TRAIN, "reward.timeout_s=nan"], 2, ["reward.timeout_s"]),
    Probe("typo in a key", [*TRAIN, "sampling.temperatur=1"], 2, ["sampling.temperature"]),
    Probe(
        "override after options",
        ["train", "--output-dir", "{run}", "--overwrite", "trainer.steps=0"],
        2,
        ["trainer.steps=0"],
    ),
    # model folders (damage 1: --overwrite must not have deleted the earlier run)
    Probe(
        "model.path empty folder",
        [*TRAIN, "model.path={tmp}/model"],
        2,
        ["config.json"],
        setup=lambda tmp: _model_folder(tmp, config=None, weights=None, tokenizer=False),
    ),
    Probe(
        "model config.json garbage",
        [*TRAIN, "model.path={tmp}/model"],
        2,
        ["config.json", "JSON"],
        setup=lambda tmp: _model_folder(tmp, config="{not json"),
    ),
    Probe(
        "model without weights",
        [*TRAIN, "model.path={tmp}/model"],
        2,
        ["no weights", "model.safetensors"],
        setup=lambda tmp: _model_folder(tmp, weights=None),
    ),
    Probe(
        "model weights torn",
        [*TRAIN, "model.path={tmp}/model"],
        2,
        ["model.safetensors", "not readable"],
        setup=lambda tmp: _model_folder(tmp, weights=b"\x00\x01garbage"),
    ),
    # passes the file checks, fails inside transformers: only the order "set up, then clear" saves the earlier run
    Probe(
        "model does not load",
        [*TRAIN, "model.path={tmp}/model"],
        1,
        ["tokenizer does not load", "tokenizer.json"],
        setup=lambda tmp: _no_tokenizer(tmp) or (tmp / "model" / "tokenizer.json").write_text("{}"),
    ),
    Probe("model without tokenizer", [*TRAIN, "model.path={tmp}/model"], 2, ["tokenizer.json"], setup=_no_tokenizer),
    # data files and reward imports
    Probe("gsm8k data missing", [*TRAIN, "task.name=gsm8k", "task.data_path={tmp}/nothing"], 2, ["nothing"]),
    Probe(
        "reward module missing",
        [*TRAIN, "reward.functions=[no_such_module:f]"],
        2,
        ["reward.functions[0]", "no_such_module"],
    ),
    Probe(
        "reward function missing",
        [*TRAIN, "reward.functions=[examples/rewards.py:nope]"],
        2,
        ["reward.functions[0]", "nope"],
    ),
    Probe("reward weights count", [*TRAIN, "reward.weights=[1.0,2.0]"], 2, ["reward.weights"]),
    # YAML recipes
    Probe(
        "yaml tab",
        TRAIN_RECIPE,
        2,
        ["recipe.yaml", "line 2"],
        recipe=b"trainer:\n\tsteps: 2\n",
    ),
    Probe(
        "yaml syntax",
        TRAIN_RECIPE,
        2,
        ["line 2", "column 1"],
        recipe=b"trainer: {steps: 2\n",
    ),
    Probe(
        "yaml not utf-8",
        TRAIN_RECIPE,
        2,
        ["line 2", "UTF-8"],
        recipe=b"trainer:\n  steps: \xff\xfe\n",
    ),
    Probe(
        "yaml python tag",
        TRAIN_RECIPE,
        2,
        ["line 1", "python"],
        recipe=b"trainer: !!python/object/apply:os.system ['echo pwned']\n",
    ),
    Probe(
        "yaml duplicate key",
        TRAIN_RECIPE,
        2,
        ["'steps' appears twice", "line 3"],
        recipe=b"trainer:\n  steps: 2\n  steps: 3\n",
    ),
    Probe(
        "yaml a list",
        TRAIN_RECIPE,
        2,
        ["mapping"],
        recipe=b"- 1\n- 2\n",
    ),
    Probe("recipe is a folder", ["train", "{tmp}", "--output-dir", "{run}", "--overwrite"], 2, ["is a folder"]),
    # the output folder (damage 2 and 7)
    Probe(
        "folder in use",
        ["train", "--output-dir", "{run}", "--resume"],
        2,
        ["in use", "pid"],
        setup=None,
        extra={"lock": True},
    ),
    Probe(
        "compare recipe duplicate key",
        ["compare", "{recipe}", "--output-dir", "{run}"],
        2,
        ["'name' appears twice", "line 2"],
        recipe=b"name: x\nname: y\n",
    ),
    Probe(
        "compare folder in use",
        ["compare", "recipes/demo.yaml", "--output-dir", "{run}"],
        2,
        ["in use", "pid"],
        extra={"lock": True},
    ),
    Probe("demo folder in use", ["demo", "--output-dir", "{run}"], 2, ["in use", "pid"], extra={"lock": True}),
    Probe(
        "output is a file",
        ["train", "--output-dir", "{tmp}/file"],
        2,
        ["is a file"],
        setup=lambda tmp: (tmp / "file").write_text("x"),
    ),
    Probe("not empty", ["train", "--output-dir", "{run}"], 2, ["not empty", "--resume", "--overwrite"]),
    Probe("resume without folder", ["train", "--resume"], 2, ["--output-dir"]),
    Probe("resume and overwrite", ["train", "--output-dir", "{run}", "--resume", "--overwrite"], 2, ["one of them"]),
    Probe(
        "resume empty folder",
        ["train", "--output-dir", "{tmp}/empty", "--resume"],
        2,
        ["nothing to resume"],
        setup=lambda tmp: (tmp / "empty").mkdir(),
    ),
    Probe(
        "resume other lr",
        ["train", "--output-dir", "{run}", "--resume", "trainer.steps=1", "optim.learning_rate=0.05"],
        2,
        ["optim.learning_rate", "refused"],
    ),
    Probe(
        "resume other controller",
        ["train", "--output-dir", "{run}", "--resume", "trainer.steps=1", "controller.name=tampo"],
        2,
        ["controller.name"],
    ),
    # eval / generate options
    Probe("eval top_p", ["eval", "{tmp}", "--top-p", "1.5"], 2, ["--top-p=1.5"]),
    Probe("eval top_k", ["eval", "{tmp}", "--top-k", "-1"], 2, ["--top-k=-1"]),
    Probe("eval limit", ["eval", "{tmp}", "--limit", "-3"], 2, ["--limit=-3"]),
    Probe("eval batch size", ["eval", "{tmp}", "--batch-size", "0"], 2, ["--batch-size=0"]),
    Probe("eval max_new_tokens", ["eval", "{tmp}", "--max-new-tokens", "0"], 2, ["--max-new-tokens=0"]),
    Probe("eval temperature", ["eval", "{tmp}", "--temperature", "1e-50"], 2, ["--temperature", "0.001"]),
    Probe("eval not a model", ["eval", "{tmp}"], 2, ["config.json"]),
    Probe(
        "generate temperature nan", ["generate", "{tmp}", "--prompt", "x", "--temperature", "nan"], 2, ["--temperature"]
    ),
    Probe("generate top_p", ["generate", "{tmp}", "--prompt", "x", "--top-p", "0"], 2, ["--top-p=0"]),
    # report (damage 4: a torn line)
    Probe("report torn line", ["report", "{run}"], 0, [], stream="out", setup=lambda tmp: None, extra={"torn": True}),
    Probe("report not a run", ["report", "{tmp}"], 2, ["metrics.jsonl"]),
]


@pytest.fixture(scope="module", autouse=True)
def _stop_lock_holders():
    yield
    for holder in _live_lock.holders:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("probe", PROBES, ids=[p.name for p in PROBES])
def test_hostile_input(probe: Probe, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)  # examples/ and recipes/ resolve as for a user
    monkeypatch.delenv("KELVIN_DEBUG", raising=False)
    run, tmp = tmp_path / "run", tmp_path / "scratch"
    run.mkdir()
    tmp.mkdir()
    _earlier_run(run)
    if probe.setup:
        probe.setup(tmp)
    if probe.recipe is not None:
        (tmp / "recipe.yaml").write_bytes(probe.recipe)
    if probe.extra.get("lock"):
        _live_lock(run)
    if probe.extra.get("torn"):
        with open(run / "metrics.jsonl", "a") as f:
            f.write('{"step": 2, "rew')
    argv = [a.format(run=run, tmp=tmp, recipe=tmp / "recipe.yaml") for a in probe.argv]
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name != LOCK_FILE)

    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's own usage errors
        code = exit.code
    captured = capsys.readouterr()

    text = captured.err if probe.stream == "err" else captured.out
    assert code == probe.code, (code, captured.err[-2000:])
    assert "Traceback" not in captured.err + captured.out
    for needle in probe.says:
        assert needle in text, (needle, text[-2000:])
    if code != 0:
        first = next(line for line in captured.err.splitlines() if line.strip())
        assert first.startswith(f"kelvin {argv[0]}: error: "), first
    # no earlier run lost: every file of it is still there, and its logs are unchanged
    after = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.name != LOCK_FILE)
    assert set(before) <= set(after), set(before) - set(after)
    assert (run / "metrics.jsonl").read_text().startswith(EARLIER_ROWS)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[1])["step"] == 1
    if not probe.extra.get("lock"):
        assert not (run / LOCK_FILE).exists()  # released on the way out


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KELVIN_DEBUG", "1")
    with pytest.raises(Exception, match=r"sampling\.temperature"):
        main(["train", "sampling.temperature=inf", "--output-dir", str(tmp_path / "x")])
    monkeypatch.delenv("KELVIN_DEBUG")
    with pytest.raises(Exception, match=r"sampling\.temperature"):
        main(["train", "sampling.temperature=inf", "--output-dir", str(tmp_path / "x"), "--debug"])


def test_the_installed_command_prints_one_line(tmp_path):
    """The same through a real process: exit code and stderr as a user sees them."""
    out = subprocess.run(
        [sys.executable, "-m", "kelvin.cli", "train", "--output-dir", str(tmp_path / "r"), "optim.adam_beta1=2"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "kelvin train: error: optim.adam_beta1=2.0 must be in [0, 1); AdamW's defaults are 0.9 and 0.999."
    ]
