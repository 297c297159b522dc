"""Issue 13's ten kinds of damage: each one a clear error or a correct behaviour now (each test failed before)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from run_settings import TWO_STEP_RUN
from safetensors.torch import load_file

from kelvin.cli import main
from kelvin.config import ConfigError, load_config
from kelvin.rewards.functions import Rewarder
from kelvin.tasks.arithmetic import arithmetic_task

ONE_STEP = [*TWO_STEP_RUN, "trainer.steps=1", "trainer.tensorboard=false", "trainer.save_every=1"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, warm_model_dir) -> Path:
    """One finished 1-step run with its checkpoint; tests copy it before changing anything."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *ONE_STEP, "--output-dir", str(out)]) == 0
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


# 1 ------------------------------------------------------------------------------------------------------------------
def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(finished_run, tmp_path, capsys):
    out = _copy(finished_run, tmp_path)
    empty_model = tmp_path / "empty-model"
    empty_model.mkdir()
    code = main(["train", *ONE_STEP, f"model.path={empty_model}", "--output-dir", str(out), "--overwrite"])
    assert code != 0
    assert "config.json" in capsys.readouterr().err  # names the missing file
    assert (out / "checkpoints" / "step-000001" / "COMPLETE").is_file()
    assert _steps(out / "metrics.jsonl") == [0, 1]


# 2 ------------------------------------------------------------------------------------------------------------------
def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(tmp_path, capsys):
    from kelvin.rl.run_folder import LOCK_FILE

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK_FILE).write_text(str(holder.pid))
        assert main(["train", *ONE_STEP, "--output-dir", str(out), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and str(out) in err
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale and is taken over (with a message)
    from kelvin.rl.run_folder import RunLock

    with RunLock(out) as lock:
        assert lock.took_over_from == holder.pid
        assert (out / LOCK_FILE).read_text().strip() == str(os.getpid())
    assert not (out / LOCK_FILE).exists()


# 3 ------------------------------------------------------------------------------------------------------------------
def test_non_finite_steps_are_skipped_counted_and_never_checkpointed(tmp_path, warm_model_dir, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            *ONE_STEP,
            "trainer.steps=4",
            "optim.learning_rate=1e6",
            "optim.max_grad_norm=0",
            "optim.max_nonfinite_grad_steps=2",
            "--output-dir",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in rows if r.get("nonfinite_grad_steps", 0) > 0]
    assert skipped, rows  # lr 1e6 does give non-finite gradients, and they were counted
    assert code != 0 and "gradient norm" in err and "optim.learning_rate" in err
    for checkpoint in (out / "checkpoints").glob("step-*"):
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values()), checkpoint


@pytest.mark.parametrize(
    "override",
    ["loss.entropy_coef=nan", "optim.learning_rate=inf", "loss.epsilon=-inf", "reward.timeout_s=nan"],
)
def test_non_finite_config_floats_are_refused(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(None, [override])


# 4 ------------------------------------------------------------------------------------------------------------------
def test_a_torn_last_line_is_dropped_on_resume_and_skipped_by_report(finished_run, tmp_path, capsys):
    out = _copy(finished_run, tmp_path)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "rew')
    with open(out / "completions.jsonl", "a") as f:
        f.write('{"step": 2, "prompt": "1+')
    assert main(["report", str(out)]) == 0
    assert main(["train", *ONE_STEP, "trainer.steps=2", "--output-dir", str(out), "--resume"]) == 0
    assert _steps(out / "metrics.jsonl") == [0, 1, 2]
    assert set(_steps(out / "completions.jsonl")) == {1, 2}


class SafetensorError(Exception):  # safetensors' own error type is no OSError: measured on a full 600 KB tmpfs
    pass


@pytest.mark.parametrize("where", ["torch.save", "save_model"])
def test_a_full_disk_during_a_checkpoint_names_the_device(tmp_path, monkeypatch, tiny_model, where):
    from kelvin.rl import checkpoint

    def full_torch(*args, **kwargs):
        raise RuntimeError("basic_ios::clear: iostream error")  # what torch.save says; the disk says the rest

    def full_safetensors(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    if where == "torch.save":
        monkeypatch.setattr(checkpoint.torch, "save", full_torch)
        monkeypatch.setattr(checkpoint, "_free_bytes", lambda path: 0)
    else:
        monkeypatch.setattr(checkpoint, "save_model", full_safetensors)
    optimizer = torch.optim.AdamW(tiny_model.parameters())
    with pytest.raises(OSError, match=r"no space left on device at .*checkpoints"):
        checkpoint.save_checkpoint(tmp_path / "checkpoints", 1, tiny_model, optimizer, {}, keep_last=2)
    assert not list((tmp_path / "checkpoints").iterdir())  # the partial write is removed


# 5 ------------------------------------------------------------------------------------------------------------------
def test_the_reward_worker_dies_with_a_killed_trainer(tmp_path):
    script = textwrap.dedent(
        """
        import os, sys, time
        from kelvin.rewards.functions import Rewarder
        from kelvin.tasks.arithmetic import arithmetic_task
        task = arithmetic_task(seed=7, min_digits=1, max_digits=3, eval_size=4)
        rewarder = Rewarder(task)
        rewarder(["1"], [task.train(0)])
        print(rewarder._worker.process.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    worker_pid = int(parent.stdout.readline())
    os.kill(worker_pid, 0)  # alive while its parent is
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(worker_pid, 0)
        except ProcessLookupError:
            return
        # a zombie (dead, not yet reaped by init) counts as gone
        status = Path(f"/proc/{worker_pid}/stat")
        if status.is_file() and status.read_text().split(")")[-1].split()[0] == "Z":
            return
        time.sleep(0.1)
    os.kill(worker_pid, 9)
    pytest.fail(f"reward worker {worker_pid} outlived its killed parent by 10 s")


# 6 ------------------------------------------------------------------------------------------------------------------
def test_resume_before_any_checkpoint_restarts_cleanly(tmp_path, warm_model_dir, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("{}\n")
    (out / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.5}\n')
    (out / "completions.jsonl").write_text('{"step": 1, "prompt": "x"}\n')
    assert main(["train", *ONE_STEP, "--output-dir", str(out), "--resume"]) == 0
    assert "no complete checkpoint" in capsys.readouterr().err
    assert _steps(out / "metrics.jsonl") == [0, 1]


# 7 ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "change", ["optim.learning_rate=0.05", "sampling.num_generations=2", "loss.loss_type=grpo", "controller.name=tampo"]
)
def test_resume_with_a_different_config_is_refused(finished_run, tmp_path, capsys, change):
    out = _copy(finished_run, tmp_path)
    before = (out / "config.yaml").read_text()
    assert main(["train", *ONE_STEP, "trainer.steps=2", change, "--output-dir", str(out), "--resume"]) == 2
    err = capsys.readouterr().err
    assert change.split("=")[0] in err and "--resume" in err
    assert (out / "config.yaml").read_text() == before
    assert _steps(out / "metrics.jsonl") == [0, 1]


def test_resume_may_extend_the_run_and_change_logging(finished_run, tmp_path, capsys):
    out = _copy(finished_run, tmp_path)
    code = main(
        ["train", *ONE_STEP, "trainer.steps=2", "trainer.log_completions=2", "--output-dir", str(out), "--resume"]
    )
    assert code == 0
    assert "trainer.steps" in capsys.readouterr().err
    assert _steps(out / "metrics.jsonl") == [0, 1, 2]


# 8 ------------------------------------------------------------------------------------------------------------------
def _inf(completions, **kw):
    return [math.inf] * len(completions)


def _huge(completions, **kw):
    return [1e39] * len(completions)


def _dict(completions, **kw):
    return {i: 1.0 for i in range(len(completions))}


def _minus_inf_some(completions, **kw):
    return [-math.inf] + [0.5] * (len(completions) - 1)


@pytest.mark.parametrize("function", [_inf, _huge, _dict, _minus_inf_some])
def test_garbage_reward_values_are_failures_not_rewards(function):
    task = arithmetic_task(seed=7, min_digits=1, max_digits=3, eval_size=4)
    examples = [task.train(i) for i in range(4)]
    with Rewarder(task, [function]) as rewarder:
        result = rewarder(["1", "2", "3", "4"], examples)
    assert result.failures == 1, result.errors
    assert function.__name__ in result.errors[0]
    values = result.per_function[function.__name__]
    assert torch.isfinite(result.rewards).all()
    assert torch.isnan(values[0])  # the bad value is no reward, not a reward
    if function is _minus_inf_some:
        assert values[1:].tolist() == [0.5, 0.5, 0.5]


# 9 ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override",
    [
        "sampling.temperature=inf",
        "sampling.temperature=1e-50",
        "sampling.max_prompt_length=-1",
        "trainer.eval_every=-2",
        "trainer.save_every=-1",
        "trainer.device=tpu",
        "optim.adam_beta1=2.0",
        "task.eval_size=0",
        "model.tiny=arithmetic-5m",
        "model.warmup_steps=-1",
        "trainer.eval_temperature=1e-50",
    ],
)
def test_values_that_used_to_train_wrongly_are_refused(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        load_config(None, [override])


# 10 -----------------------------------------------------------------------------------------------------------------
class _Planted:
    def __reduce__(self):
        return (os.mkdir, (os.environ["KELVIN_PLANTED"],))


def test_a_planted_pickle_in_a_checkpoint_is_not_run(finished_run, tmp_path, monkeypatch, capsys):
    out = _copy(finished_run, tmp_path)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("KELVIN_PLANTED", str(marker))
    state = out / "checkpoints" / "step-000001" / "state.pt"
    torch.save({"step": 1, "evil": _Planted()}, state)
    code = main(["train", *ONE_STEP, "trainer.steps=2", "--output-dir", str(out), "--resume"])
    assert not marker.exists(), "the pickle in state.pt ran"
    assert code != 0
    assert "state.pt" in capsys.readouterr().err
