"""Guards against silently wrong training: an optimizer step with a NaN/inf gradient norm is skipped, not applied.

An applied NaN step turns every weight into NaN; the run then crashes a step later (or, worse, writes a checkpoint of
NaNs that --resume loads). Skipping keeps the weights and the optimizer moments as they were, the step is counted
(`nonfinite_grad_steps`), and a run that keeps producing them stops with an error that says what to change.
"""

from __future__ import annotations

import math


class NonFiniteGradientError(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite gradient norm."""


class NonFiniteGuard:
    """Decides, per optimizer step, whether its gradient may be applied.

    `allow(norm)` is True for a finite norm. For a NaN/inf norm it counts the skip and returns False, or raises
    NonFiniteGradientError once `max_consecutive` skips in a row have been exceeded. The count survives for the run's
    metrics; the consecutive streak resets at the first finite step.
    """

    def __init__(self, max_consecutive: int) -> None:
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.streak = 0

    def allow(self, grad_norm: float) -> bool:
        if math.isfinite(grad_norm):
            self.streak = 0
            return True
        self.skipped += 1
        self.streak += 1
        if self.streak > self.max_consecutive:
            raise NonFiniteGradientError(
                f"the gradient norm was {grad_norm} on {self.streak} optimizer steps in a row (skipped, not applied; "
                f"optim.max_nonfinite_grad_steps={self.max_consecutive}); training diverged: lower "
                "optim.learning_rate, set optim.max_grad_norm (e.g. 1.0), and resume from the last checkpoint"
            )
        return False

    def metrics(self) -> dict[str, float]:
        return {"nonfinite_grad_steps": float(self.skipped)}

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "streak": self.streak}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.streak = int(state.get("streak", 0))
