"""`kelvin train` end to end on the tiny model: the run folder holds what DESIGN section 6 promises."""

from __future__ import annotations

import json

import pytest
from run_settings import TWO_STEP_RUN

from kelvin.cli import main

SMALL = TWO_STEP_RUN

EXPECTED_KEYS = {
    "step",
    "reward",
    "reward_std",
    "frac_reward_zero_std",
    "accuracy",
    "completion_length",
    "entropy",
    "clip_ratio/low_mean",
    "clip_ratio/high_mean",
    "clip_ratio/region_mean",
    "loss",
    "grad_norm",
    "learning_rate",
    "temperature/mean",
    "sampler_logprob_gap/max",
    "time/step",
    "kl",
}


def test_train_writes_a_complete_run_folder(tmp_path, warm_model_dir, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "recipes/arithmetic-fixed.yaml",
            *SMALL,
            "sampling.temperature=0.7",
            "loss.beta=0.01",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0
    assert "run folder" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[1].keys() >= EXPECTED_KEYS, EXPECTED_KEYS - rows[1].keys()
    assert rows[1]["temperature/mean"] == pytest.approx(0.7)
    assert rows[1]["sampler_logprob_gap/max"] < 1e-4  # the invariant, measured on the real run
    assert "eval/accuracy" in rows[2]
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    assert completions and all(set(c["temperature"]) == {0.7} for c in completions)
    assert (out / "config.yaml").is_file() and (out / "model" / "model.safetensors").is_file()
    assert any((out / "tensorboard").iterdir())
    assert (out / "checkpoints" / "step-000002" / "COMPLETE").is_file()


def test_train_refuses_to_overwrite_and_reports_config_errors(tmp_path, warm_model_dir, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    assert main(["train", "recipes/arithmetic-fixed.yaml", *SMALL, "--output-dir", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (
        main(
            [
                "train",
                "recipes/arithmetic-fixed.yaml",
                "sampling.num_generations=1",
                "--output-dir",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "num_generations=1 must be >= 2" in capsys.readouterr().err
