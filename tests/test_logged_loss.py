"""The logged `loss` equals TRL 1.16's logged loss (issue 11: dapo's was TRL's divided by the micro-batch count).

TRL's Trainer logs, per optimizer step, the sum of the losses `training_step` returned for its gradient-accumulation
micro-batches, averaged over processes. GRPOTrainer's micro-batch losses: grpo = mean over rows of the per-row token
mean, / GA; dapo = S / (N / P) with S the micro-batch's masked loss sum and N the step's active tokens over all
processes (per optimizer step; TRL writes it over the generation batch with GA / steps_per_generation, the same here).
The reference below is that recipe in NumPy, from the per-token clipped surrogate computed independently.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kelvin.rl.grpo import LossInputs, LossSettings, LossStats, grpo_loss

EPS = 0.2


def batch(seed: int, rows: int = 6, length: int = 7):
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(rows, length, generator=gen) * 3
    new = old + torch.randn(rows, length, generator=gen) * 0.3
    adv = torch.randn(rows, generator=gen)
    mask = (torch.rand(rows, length, generator=gen) > 0.25).float()
    mask[:, 0] = 1
    return new, old, adv, mask


def per_token_numpy(new, old, adv):
    ratio = np.exp(new - old)
    a = adv[:, None]
    return -np.minimum(ratio * a, np.clip(ratio, 1 - EPS, 1 + EPS) * a)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_logged_loss_equals_trls_over_micro_batches_and_processes(loss_type):
    processes = [batch(0), batch(1)]  # two processes, three micro-batches of two rows each
    chunks = [slice(0, 2), slice(2, 4), slice(4, 6)]
    active = sum(float(m.sum()) for *_, m in processes)
    summed = np.zeros(8)
    trl_per_process = []
    for new, old, adv, mask in processes:
        total, trl = LossStats.zero(), 0.0
        settings = LossSettings(
            loss_type=loss_type,
            epsilon=EPS,
            epsilon_high=EPS,
            grad_accum_steps=len(chunks),
            num_items_in_batch=active,
            num_processes=len(processes),
            max_completion_length=7,
        )
        for c in chunks:
            _, stats = grpo_loss(LossInputs(new[c], old[c], adv[c], mask[c]), settings)
            total = total.combine(stats)
            ell = per_token_numpy(new[c].double().numpy(), old[c].double().numpy(), adv[c].double().numpy())
            m = mask[c].double().numpy()
            if loss_type == "dapo":
                trl += (ell * m).sum() / (active / len(processes))
            else:
                trl += ((ell * m).sum(-1) / np.maximum(m.sum(-1), 1)).mean() / len(chunks)
        summed += np.array(total.sums())
        trl_per_process.append(trl)
    logged = total.metrics(summed.tolist(), passes=len(chunks) * len(processes), with_kl=False)["loss"]
    assert logged == pytest.approx(float(np.mean(trl_per_process)), rel=1e-6)
