"""The trainer's ``on_epoch_end`` callback, turned into Optuna reports and prune decisions.

Each epoch the reporter stores the trainer's metrics dict with the trial (per-class accuracy
and F1, confusion matrix, prediction histogram and entropy, train metrics; NaN stored as null;
see :mod:`search.contract`), reports the objective metric as the intermediate value of step
``k``, and asks the study's pruner for a decision with its reason (:func:`prune_reason`, the
same decision ``trial.should_prune()`` gives). On a prune it raises :class:`optuna.TrialPruned`
with the reason, which ``octtrain.fit`` lets through (the worker stores it with the trial's end).
A trial enqueued ``unpruned`` (:func:`search.contract.unpruned`: ``octsearch rerun``) never asks
the pruner: it runs its whole budget, whatever any pruner would say.

While the database is unreachable (:func:`search.storage.retry.is_outage`) training goes on: the
epoch is queued (and written to ``queue_file`` in the run directory, so that the worker can
deliver it should this process not), no prune decision is taken, and at the first epoch after
the database is back the queued epochs are delivered in order and the pruner judges them all.
:meth:`EpochReporter.finish` delivers what is still queued when the fit ends, retrying for
the rest of the outage limit.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.contract import record_epoch, unpruned
from search.optuna_compat import latest_trial
from search.pruning import prune_reason
from search.storage import DatabaseUnreachableError, is_outage, single_attempt
from search.trial.epoch_queue import EpochQueue


def metric_value(metrics: Mapping[str, Any], key: str) -> float:
    """A metric as a float; NaN where it is missing or not a number."""
    value = metrics.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


class EpochReporter:
    """``on_epoch_end(epoch, metrics)`` for one running trial of a study."""

    def __init__(self, trial: optuna.trial.Trial, metric_key: str,
                 queue_file: Path | None = None) -> None:
        self._trial = trial
        self._metric_key = metric_key
        self._queue = EpochQueue(queue_file)
        self._judged = not unpruned(trial)  # its attributes as enqueued, read when it was taken

    def __call__(self, epoch: int, metrics: dict[str, Any]) -> None:
        self._queue.add(epoch, metrics)
        try:
            with single_attempt():
                self._deliver()
                study = self._trial.study
                reason = prune_reason(study.pruner, study, self._as_stored()) if self._judged else None
        except Exception as err:
            if not is_outage(err):
                raise
            return  # the database is unreachable: keep training, deliver at the next epoch
        if reason is not None:  # the worker records it with the trial's end (one writer)
            raise optuna.TrialPruned(reason)

    def finish(self) -> None:
        """Deliver the queued epochs, retrying for the rest of the outage limit; what cannot be
        delivered stays in the queue file for the worker."""
        with contextlib.suppress(DatabaseUnreachableError):
            self._deliver()

    def _deliver(self) -> None:
        for epoch, metrics in self._queue.pending():
            record_epoch(self._trial, epoch, metrics, metric_value(metrics, self._metric_key))
            self._queue.delivered(epoch)

    def _as_stored(self) -> optuna.trial.FrozenTrial:
        """The trial as ``trial.should_prune()`` shows it to the pruner: Optuna's copy of what
        this process read at the start and wrote since (no database read: one fewer full read
        of the study's running trials per epoch). Optuna has no public getter for it; without
        the private one, the running trial of that number is read back from the storage."""
        latest = latest_trial(self._trial)
        if latest is not None:
            return latest
        running = self._trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        (trial,) = (t for t in running if t.number == self._trial.number)
        return trial
