"""A trial's epoch reports not yet in the database, kept in memory and in its run directory.

The trial process's reporter queues each epoch before delivering it (:mod:`search.trial.reporter`);
while the database is unreachable the queue grows, and :data:`QUEUE_FILE` in the run
directory holds it, so that the worker can deliver it (:func:`deliver_queued`) when the trial
process ends before the database is back. Epochs are delivered in order and each at most
once: an epoch's attribute write and intermediate value are both idempotent.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import optuna

from octtrain.errors import host_errors
from octtrain.files import write_json_atomic
from octtrain.tracking import json_safe
from search.contract import record_epoch

QUEUE_FILE = "unreported_epochs.json"


class EpochQueue:
    """Epochs (metrics and the reported value) waiting for the database, in epoch order."""

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._items: dict[int, dict[str, Any]] = {}

    def add(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        self._items[epoch] = dict(metrics)
        self._save()

    def pending(self) -> list[tuple[int, dict[str, Any]]]:
        return sorted(self._items.items())

    def delivered(self, epoch: int) -> None:
        self._items.pop(epoch, None)
        self._save()

    def __len__(self) -> int:
        return len(self._items)

    def _save(self) -> None:
        if self._path is None:
            return
        if not self._items:
            self._path.unlink(missing_ok=True)
            return
        records = [{"epoch": e, "metrics": json_safe(m)} for e, m in self.pending()]
        with host_errors("the trial's queue of undelivered epochs", self._path):
            write_json_atomic(self._path, records, allow_nan=False)


def read_queue(run_dir: Path) -> list[tuple[int, dict[str, Any]]]:
    """The epochs a trial process left undelivered in ``run_dir`` (empty: none)."""
    try:
        records = json.loads((run_dir / QUEUE_FILE).read_text())
        return [(int(r["epoch"]), dict(r["metrics"])) for r in records]
    except (OSError, ValueError, TypeError, KeyError):
        return []


def deliver_queued(trial: optuna.Trial, run_dir: Path, value_of: Callable[[Mapping[str, Any]], float]) -> int:
    """Record the epochs queued in ``run_dir`` on the trial (:func:`search.contract.record_epoch`);
    returns how many. ``value_of(metrics)`` is the reported value. A trial finished meanwhile
    (failed as stale) takes none."""
    queued = read_queue(run_dir)
    try:
        for epoch, metrics in queued:
            record_epoch(trial, epoch, metrics, value_of(metrics))
    except optuna.exceptions.UpdateFinishedTrialError:
        return 0
    (run_dir / QUEUE_FILE).unlink(missing_ok=True)
    return len(queued)
