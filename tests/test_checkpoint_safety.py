"""Checkpoint safety: the RNG state round-trips under weights_only loading, a broken newest checkpoint falls back to the
previous one (named), orphaned .tmp folders are removed, non-finite weights are never written; the resume config
comparison and the non-finite gradient guard."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from kelvin.config import ConfigError, load_config, to_dict
from kelvin.rl.checkpoint import (
    CheckpointError,
    load_latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from kelvin.rl.guards import NonFiniteGradientError, NonFiniteGuard
from kelvin.rl.resume import compare_resume_config


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3)


def _save(root, step, model, state=None):
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 4)).sum().backward()
    optimizer.step()
    return save_checkpoint(root, step, model, optimizer, state or {"rng": rng_state()}, keep_last=5)


def test_rng_state_round_trips_with_weights_only_loading(tmp_path):
    model = _model()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    _save(tmp_path, 1, model)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    path, state = load_latest_checkpoint(tmp_path, _model(), torch.optim.AdamW(_model().parameters()))
    set_rng_state(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert path.name == "step-000001" and state["step"] == 1


def test_a_broken_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    model = _model()
    _save(tmp_path, 1, model)
    weights_at_1 = {k: v.clone() for k, v in model.state_dict().items()}
    _save(tmp_path, 2, model)
    (tmp_path / "step-000002" / "optimizer.pt").write_bytes(b"torn")
    (tmp_path / ".tmp-step-000003-abcd").mkdir()  # a write that was killed
    fresh = _model()
    path, state = load_latest_checkpoint(tmp_path, fresh, torch.optim.AdamW(fresh.parameters()))
    err = capsys.readouterr().err
    assert path.name == "step-000001" and state["step"] == 1
    assert "step-000002/optimizer.pt" in err and "previous checkpoint" in err
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in weights_at_1.items())
    assert not (tmp_path / ".tmp-step-000003-abcd").exists()


def test_no_loadable_checkpoint_is_an_error_naming_the_files(tmp_path):
    model = _model()
    _save(tmp_path, 1, model)
    (tmp_path / "step-000001" / "model.safetensors").write_bytes(b"\x00")
    with pytest.raises(CheckpointError, match=r"step-000001/model\.safetensors"):
        load_latest_checkpoint(tmp_path, _model(), torch.optim.AdamW(_model().parameters()))


def test_non_finite_weights_are_never_written(tmp_path):
    model = _model()
    with torch.no_grad():
        model.weight[0, 0] = math.nan
    with pytest.raises(CheckpointError, match="weight holds NaN"):
        _save(tmp_path, 1, model)
    assert not list(tmp_path.glob("step-*"))


def test_resume_comparison_allows_extending_and_refuses_the_rest():
    saved = to_dict(load_config(None, ["trainer.steps=4"]))
    assert compare_resume_config(saved, to_dict(load_config(None, ["trainer.steps=8", "trainer.eval_every=2"]))) == [
        "trainer.eval_every: 0 -> 2 (evaluation only)",
        "trainer.steps: 4 -> 8 (how many steps to run)",
    ]
    with pytest.raises(ConfigError, match=r"loss\.beta: 0\.0 -> 0\.1") as err:
        compare_resume_config(saved, to_dict(load_config(None, ["trainer.steps=8", "loss.beta=0.1"])))
    assert "allowed: trainer.steps" in str(err.value)
    cosine = to_dict(load_config(None, ["trainer.steps=4", "optim.lr_scheduler=cosine"]))
    with pytest.raises(ConfigError, match=r"spans trainer\.steps"):
        compare_resume_config(cosine, to_dict(load_config(None, ["trainer.steps=8", "optim.lr_scheduler=cosine"])))
    with pytest.raises(ConfigError, match=r"controller\.name=fixed spans trainer\.steps"):  # as if fixed used it
        compare_resume_config(saved, to_dict(load_config(None, ["trainer.steps=8"])), controller_uses_steps=True)


def test_the_guard_skips_counts_and_stops():
    guard = NonFiniteGuard(max_consecutive=2)
    assert guard.allow(1.0)
    assert not guard.allow(math.nan) and not guard.allow(math.inf)
    assert guard.allow(0.5)  # the streak resets
    assert not guard.allow(math.nan) and not guard.allow(math.nan)
    with pytest.raises(NonFiniteGradientError, match=r"optim\.learning_rate"):
        guard.allow(-math.inf)
    assert guard.metrics() == {"nonfinite_grad_steps": 5.0}


def test_a_run_saved_before_a_setting_existed_resumes_when_it_is_at_its_default():
    """Upgrading Kelvin adds settings (sampling.engine came with vLLM): a run whose saved config lacks one resumes if
    the setting is at its default (the behaviour the run had), and is refused if it is not."""
    saved = to_dict(load_config(None, ["trainer.steps=4"]))
    del saved["sampling"]["engine"]
    assert compare_resume_config(saved, to_dict(load_config(None, ["trainer.steps=4"]))) == [
        "sampling.engine: '<absent>' -> 'kelvin' (a newer setting at its default)"
    ]
    with pytest.raises(ConfigError, match=r"sampling\.engine: '<absent>' -> 'vllm'"):
        compare_resume_config(saved, to_dict(load_config(None, ["trainer.steps=4", "sampling.engine=vllm"])))
