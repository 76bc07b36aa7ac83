"""The trainer's ``on_epoch_end`` callback, turned into Optuna reports and prune decisions.

Each epoch the reporter stores the trainer's metrics dict with the trial (per-class accuracy
and F1, confusion matrix, prediction histogram and entropy, train metrics; NaN stored as null;
see :mod:`search.record`), reports the objective metric as the intermediate value of step
``k``, and asks the study's pruner for a decision with its reason (:func:`prune_reason`, the
same decision ``trial.should_prune()`` gives). On a prune it stores the reason with the trial
and raises :class:`optuna.TrialPruned` with it, which ``octtrain.fit`` lets through.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import TrialState

from search.pruner import prune_reason
from search.record import write_epoch, write_prune_reason


def metric_value(metrics: Mapping[str, Any], key: str) -> float:
    """A metric as a float; NaN where it is missing or not a number."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


class EpochReporter:
    """``on_epoch_end(epoch, metrics)`` for one running trial of a study."""

    def __init__(self, trial: optuna.trial.Trial, metric_key: str) -> None:
        self._trial = trial
        self._metric_key = metric_key

    def __call__(self, epoch: int, metrics: dict[str, Any]) -> None:
        write_epoch(self._trial, epoch, metrics)
        self._trial.report(metric_value(metrics, self._metric_key), epoch)
        study = self._trial.study
        reason = prune_reason(study.pruner, study, self._as_stored())
        if reason is not None:
            write_prune_reason(self._trial, reason)
            raise optuna.TrialPruned(reason)

    def _as_stored(self) -> optuna.trial.FrozenTrial:
        """The trial as the storage holds it now, as ``trial.should_prune()`` shows it to the
        pruner (Optuna has no public getter for it: it is the running trial of that number)."""
        running = self._trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        (trial,) = (t for t in running if t.number == self._trial.number)
        return trial
