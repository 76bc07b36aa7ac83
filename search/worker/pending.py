"""A finished trial's result that could not reach the database, kept on disk and delivered later.

When the worker cannot tell a trial's end because the database stayed unreachable past the
outage limit (:class:`~search.storage.retry.DatabaseUnreachableError`), :func:`tell_or_keep` keeps the
result in the trial's run directory (``result.json``) with a marker, :data:`MARKER_FILE`
(study, trial id and number), and the worker stops. The next ``octsearch run`` of the study on
any host that sees that runs directory delivers it before asking for new trials
(:func:`deliver_pending`): the epochs the trial process left queued, then the result, told as
the worker would have. A trial that is finished by then (another worker failed it as stale
and re-queued its parameters, or the lost tell had in fact been committed) is left as it is,
so no result is counted twice and no stale FAIL is overridden.

A trial process that dies during an outage (its worker killed outright) leaves its epoch queue
(:data:`~search.trial.epoch_queue.QUEUE_FILE`) and no marker; once another worker has failed the
trial as stale, those epochs can no longer be stored (a finished trial takes no attributes, and
its continuation starts from a checkpoint whose epochs are already stored, or from epoch 0), so
:func:`drop_ended_queues` removes the file, with a notice, when a worker starts and when it ends.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import optuna
from optuna.storages import BaseStorage

from octtrain.files import write_json_atomic
from search.contract import trial_dirs
from search.notices import notice
from search.optuna_compat import take_over
from search.optuna_compat import trial_id as storage_id
from search.storage import DatabaseUnreachableError
from search.trial import QUEUE_FILE, RESULT_FILE, TrialResult, deliver_queued, metric_value, read_queue

MARKER_FILE = "undelivered.json"

Tell = Callable[[optuna.Study, optuna.Trial, TrialResult], None]


def tell_or_keep(study: optuna.Study, storage: BaseStorage, trial: optuna.Trial,
                 result: TrialResult, run_dir: Path, metric_key: str, tell: Tell) -> None:
    """Deliver the epochs the trial process left queued, then ``tell`` the result; if the
    database stays unreachable, keep the result in ``run_dir`` and raise."""
    try:
        deliver_queued(trial, run_dir, lambda m: metric_value(m, metric_key))
        tell(study, trial, result)
    except DatabaseUnreachableError as err:
        keep(run_dir, study.study_name, storage_id(trial), trial.number, result)
        raise DatabaseUnreachableError(
            f"{err}; the result of trial {trial.number} is kept in {run_dir} and delivered by "
            "the next `octsearch run` of this study") from err


def keep(run_dir: Path, study_name: str, trial_id: int, number: int, result: TrialResult) -> None:
    """Write ``result`` and the marker that says it is not in the database yet."""
    run_dir.mkdir(parents=True, exist_ok=True)
    result.write(run_dir / RESULT_FILE)
    write_json_atomic(run_dir / MARKER_FILE,
                      {"study": study_name, "trial_id": trial_id, "number": number})


def pending_dirs(study: optuna.Study, runs_dir: Path) -> list[Path]:
    """Run directories of the study holding an undelivered result, by trial number."""
    return [d for d in trial_dirs(runs_dir, study) if (d / MARKER_FILE).exists()]


def deliver_pending(study: optuna.Study, storage: BaseStorage, runs_dir: Path, metric_key: str,
                    tell: Tell, *, out: TextIO | None = None) -> int:
    """Deliver every kept result of the study under ``runs_dir`` (see module); returns how many
    were told. A marker of another study or an unreadable result is left alone. Then
    :func:`drop_ended_queues`."""
    told = 0
    for run_dir in pending_dirs(study, runs_dir):
        marker = run_dir / MARKER_FILE
        try:
            record = json.loads(marker.read_text())
            trial_id, number = int(record["trial_id"]), int(record["number"])
        except (OSError, ValueError, TypeError, KeyError):
            continue
        result = TrialResult.read(run_dir / RESULT_FILE)
        if record.get("study") != study.study_name or result is None:
            continue
        try:
            frozen = storage.get_trial(trial_id)
        except KeyError:  # not in this database
            continue
        if frozen.number != number:
            continue
        if frozen.state.is_finished():
            notice(out, f"trial {number} is already {frozen.state.name}: its kept result "
                      f"({result.state.value}) is not delivered")
        else:
            trial = take_over(study, trial_id)
            tell_or_keep(study, storage, trial, result, run_dir, metric_key, tell)
            told += 1
            notice(out, f"delivered the kept result of trial {number} ({result.state.value}) "
                      f"from {run_dir}")
        marker.unlink(missing_ok=True)
    drop_ended_queues(study, storage, runs_dir, out=out)
    return told


def drop_ended_queues(study: optuna.Study, storage: BaseStorage, runs_dir: Path, *,
                      out: TextIO | None = None) -> int:
    """Remove the epoch queues that trials of the study which have ended left without a kept
    result (see module); a trial still running, or not in this database, keeps its queue.
    Returns how many were removed."""
    study_id = storage.get_study_id_from_name(study.study_name)
    dropped = 0
    for run_dir in trial_dirs(runs_dir, study):
        queue = run_dir / QUEUE_FILE
        if not queue.exists() or (run_dir / MARKER_FILE).exists():
            continue
        number = run_dir.name.removeprefix("trial_")
        if not number.isdigit():
            continue
        try:
            frozen = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, int(number)))
        except KeyError:
            continue
        if not frozen.state.is_finished():
            continue
        epochs = [e for e, _ in read_queue(run_dir)]
        queue.unlink(missing_ok=True)
        dropped += 1
        notice(out, f"trial {frozen.number} is {frozen.state.name}: the {len(epochs)} epoch(s) "
                    f"{epochs} its trial process could not deliver are dropped ({queue})")
    return dropped
