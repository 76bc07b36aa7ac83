"""The trainer's ``on_epoch_end`` callback, turned into Optuna reports and prune decisions.

Each epoch the reporter stores the trainer's metrics dict as the trial user attribute
``epoch_<k>`` (per-class accuracy and F1, confusion matrix, prediction histogram and entropy,
train metrics; NaN stored as null), reports the objective metric as the intermediate value of
step ``k``, and asks ``trial.should_prune()``. On a prune it stores the pruner's reason as
``prune_reason`` and raises :class:`optuna.TrialPruned`, which ``octtrain.fit`` lets through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna

from octtrain.tracking import json_safe
from search.pruner import epoch_attr

PRUNE_REASON_ATTR = "prune_reason"


def metric_value(metrics: Mapping[str, Any], key: str) -> float:
    """A metric as a float; NaN where it is missing or not a number."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


class EpochReporter:
    """``on_epoch_end(epoch, metrics)`` for one trial of a study."""

    def __init__(self, trial: optuna.trial.Trial, metric_key: str) -> None:
        self._trial = trial
        self._metric_key = metric_key

    def __call__(self, epoch: int, metrics: dict[str, Any]) -> None:
        self._trial.set_user_attr(epoch_attr(epoch), json_safe(metrics))
        self._trial.report(metric_value(metrics, self._metric_key), epoch)
        if self._trial.should_prune():
            pruner = self._trial.study.pruner
            reasons: dict[int, str] = getattr(pruner, "reasons", {})
            reason = reasons.get(self._trial.number,
                                 f"{type(pruner).__name__}: pruned at epoch {epoch}")
            self._trial.set_user_attr(PRUNE_REASON_ATTR, reason)
            raise optuna.TrialPruned(reason)
