"""Early stopping and best-checkpoint selection on one validation metric."""

from __future__ import annotations

import math

from octtrain.config import EarlyStoppingSection


def is_improvement(value: float, best: float | None, mode: str, min_delta: float) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta``. NaN never improves; the
    first finite value always does."""
    if math.isnan(value):
        return False
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta


class EarlyStopping:
    """Tracks the best epoch; ``should_stop`` after ``patience`` epochs without improvement."""

    def __init__(self, cfg: EarlyStoppingSection) -> None:
        self.cfg = cfg
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0

    def update(self, epoch: int, value: float) -> bool:
        """Record an epoch's value; True when it is the new best."""
        if is_improvement(value, self.best, self.cfg.mode, self.cfg.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.cfg.enabled and self.bad_epochs >= self.cfg.patience
