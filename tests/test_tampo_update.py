"""TAMPO's meta-update as the trainer drives it (issue 11's mutants): the batch mean runs over every trajectory, the
new meta-policy is the one the very next step draws from, and the update sees the whole batch of every process."""

from __future__ import annotations

import torch

from kelvin.controllers import tampo
from kelvin.controllers.base import Scores
from kelvin.controllers.tampo import TAMPOController, TAMPOControllerConfig
from kelvin.rl.rollouts import Rollouts

K = 10


def one_hot_loglik(preferred: list[int]) -> torch.Tensor:
    """Row i prefers candidate preferred[i] by 10 nats: sparsemax gives it weight exactly 1 (others 0)."""
    loglik = torch.full((len(preferred), K), -10.0)
    loglik[torch.arange(len(preferred)), torch.tensor(preferred)] = 0.0
    return loglik


def scores_for(loglik: torch.Tensor) -> Scores:
    rows = loglik.shape[0]
    return Scores(
        old_logprobs=torch.zeros(rows, 1), entropy_at_one=torch.zeros(rows, 1), rows={"virtual_loglik": loglik}
    )


def rollouts(rows: int) -> Rollouts:
    return Rollouts(
        prompt_ids=torch.ones(rows, 1, dtype=torch.long),
        prompt_mask=torch.ones(rows, 1, dtype=torch.long),
        completion_ids=torch.ones(rows, 1, dtype=torch.long),
        completion_mask=torch.ones(rows, 1, dtype=torch.long),
        temperature=torch.ones(rows, 1),
        behaviour_logprobs=torch.zeros(rows, 1),
        truncated=torch.zeros(rows, dtype=torch.bool),
    )


def test_batch_mean_counts_rows_whose_advantage_is_zero():
    """Paper Eq. 10 divides by |B| G: groups with equal rewards (A = 0) still count in the mean."""
    controller = TAMPOController(TAMPOControllerConfig(ema_alpha=1.0))
    preferred = [3, 3, 7, 7, 1, 1]
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0, 0.0, 0.0])
    controller.begin_step(0)
    controller.update(rollouts(6), advantages, scores_for(one_hot_loglik(preferred)))
    expected = torch.zeros(K, dtype=torch.float64)
    for k, a in zip(preferred, advantages.tolist()):
        expected[k] += a / 6  # all six rows, not the four with A != 0
    torch.testing.assert_close(controller.ema, expected)


def test_the_next_step_draws_from_the_updated_meta_policy():
    """top_p = 0 draws the argmax: after an update that favours candidate 6 the very next step samples at it."""
    controller = TAMPOController(TAMPOControllerConfig(ema_alpha=1.0, top_p=0.0))
    controller.begin_step(0)
    assert controller.batch_temperature() == 0.6  # uniform: the first candidate
    controller.update(rollouts(4), torch.tensor([1.0, 1.0, -1.0, -1.0]), scores_for(one_hot_loglik([6, 6, 2, 2])))
    assert int(controller.distribution.argmax()) == 6
    controller.begin_step(1)
    assert controller.batch_temperature() == 1.2
    assert controller.metrics()["temperature/chosen"] == 1.2


def test_update_uses_the_rows_of_every_process(monkeypatch):
    """With two processes each holds half the batch; the update must see both halves (gather_rows), so that every
    process applies the same update. Here a fake gather appends the other process's rows."""
    local = one_hot_loglik([4, 4]), torch.tensor([1.0, -1.0])
    other = one_hot_loglik([8, 8]), torch.tensor([1.0, 1.0])
    pending = [other[0], other[1]]

    def gather(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, pending.pop(0).to(x.dtype)])

    monkeypatch.setattr(tampo, "gather_rows", gather)
    controller = TAMPOController(TAMPOControllerConfig(ema_alpha=1.0))
    controller.begin_step(0)
    metrics = controller.update(rollouts(2), local[1], scores_for(local[0]))
    assert pending == []  # both tensors were gathered
    assert metrics["temperature/meta_update_rows"] == 4
    expected = torch.zeros(K, dtype=torch.float64)
    expected[8] = 2.0 / 4  # the other process's two winners at candidate 8; candidate 4's +1 and -1 cancel
    torch.testing.assert_close(controller.ema, expected)
