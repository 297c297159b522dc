"""DAPO dynamic sampling (arXiv 2503.14476): keep only groups whose rewards differ, sample more until the batch is full.

Every process must sample (and advance the data position) in lockstep, so whether another round is needed is
decided over all processes (`any_process_short`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kelvin.rl.step_record import StepRecord


def fill_with_informative_groups(
    record: StepRecord,
    sample_more: Callable[[], StepRecord],
    any_process_short: Callable[[bool], bool],
    groups_wanted: int,
    num_generations: int,
    max_rounds: int,
    pad_id: int,
) -> StepRecord:
    """A batch of `groups_wanted` groups with a reward spread, from `record` and up to `max_rounds` more rounds.

    When rounds run out, the batch is topped up with uninformative groups so every process keeps the same shape;
    when no group at all is informative, `record` itself is returned (its advantages are all 0).
    """
    g = num_generations
    device = record.rewards.device
    kept: list[StepRecord] = []
    have, rounds = 0, 0
    current = record
    while True:
        rounds += 1
        informative = ~current.std_is_zero.view(-1, g)[:, 0]
        if informative.any():
            rows = torch.nonzero(informative.repeat_interleave(g)).squeeze(-1)
            kept.append(current.select(rows))
            have += int(informative.sum())
        if not any_process_short(have < groups_wanted) or rounds > max_rounds:
            break
        current = sample_more()
    if not kept:
        return record
    merged = StepRecord.merge(kept, pad_id)
    if have > groups_wanted:
        merged = merged.select(torch.arange(groups_wanted * g, device=device))
    if have < groups_wanted:
        uninformative = torch.nonzero(current.std_is_zero.view(-1, g)[:, 0]).squeeze(-1)[: groups_wanted - have]
        rows = (uninformative.unsqueeze(1) * g + torch.arange(g, device=device)).reshape(-1)
        merged = StepRecord.merge([merged, current.select(rows)], pad_id)
        if merged.rewards.numel() < groups_wanted * g:
            missing = groups_wanted * g - merged.rewards.numel()
            merged = StepRecord.merge([merged, record.select(torch.arange(missing, device=device))], pad_id)
    merged.sampling_rounds = rounds
    return merged
