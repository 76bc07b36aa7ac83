"""What octsearch stores in a study: the names and values of its attributes, read and written here.

This is the contract between the worker, the trial process, the pruner, the reports and the
dashboard, and with every study already stored: the names and the shape of the values must not
change. A study carries three user attributes, written once by the worker that creates it:

- :data:`CREATION_ID_ATTR`: a short random id of this study (8 hex digits), so that a new study
  under an old name never shares the old one's run directories (:func:`runs_folder`; a study
  stored before the id existed has none);
- :data:`SPACE_FILE_ATTR`: the path of the space file it came from (``""`` for none);
- :data:`SPACE_ATTR`: the canonical search space (:meth:`search.space.search_space.SearchSpace.to_dict`),
  written last.

``octsearch finalize`` adds two when it evaluates the best trial on the test split:
:data:`TEST_METRICS_ATTR` (the last test result: the trainer's ``test/...`` metrics with the
trial, run directory and split) and :data:`TEST_USES_ATTR` (every use of the test split, so a
second look at it is on record).

A trial carries these user attributes (the worker writes the first ones before the trial
process starts; the reporter writes one per epoch; the worker writes how the trial ended):

========================  ==================================================================
``enqueued``              the name of an enqueued trial (set when it is enqueued; kept when a
                          stale trial is re-queued)
``overrides``             the dotted trainer overrides of the trial: sampled params (+ device)
``unfreeze_at_epoch``     the epoch the encoder unfreezes (``-1``: never)
``epochs``                the trial's epoch budget (``train.epochs``); none in older studies
``run_dir``               the trial's run directory (absolute)
``host``                  the host name of the worker that ran it
``devices``               the devices its worker's slot gave it (``tpu:2,3``, ``cuda:1``,
                          ``cpu:0-7``; :class:`search.trial.placement.Assignment`); none before slots
``best_epoch``            COMPLETE: the epoch of the told (best) value
``prune_reason``          PRUNED: why, one line
``prune_kind``            PRUNED: which rule: ``collapse``, ``inner`` or ``diverged``
                          (:func:`search.pruning.prune_kind`); none in older studies
``fail_reason``           FAIL: why, one line
``output_tail``           FAIL of a process that died without a result: its last lines
``preempted``             stopped by a signal: ``{"reason", "epochs_done", "checkpoint"}``
                          (``checkpoint`` null when none was written); stored by the trial
                          process as it stops, so a sweep of stale trials finds it
``resume_from``           a continuation: the resume checkpoint it continues
``resumes_trial``         a continuation: the number of the stopped trial it continues
``unpruned``              ``true``: the pruner is never asked; the trial runs its whole budget
                          (set when it is enqueued; kept when it is re-queued)
``rerun_of``              a rerun (``octsearch rerun N``): the number of the trial whose
                          configuration it runs again, unpruned; its ``enqueued`` name is
                          ``rerun of N``
========================  ==================================================================

The trainer's metrics dict of each epoch (0-based; NaN as null), about 1 kB of JSON, is the
*system* attribute ``octsearch:epoch_NNN`` (:func:`write_epoch`): optuna-dashboard renders
every user attribute on a trial's page and in its Smart Selection, and these made them
thousands of pixels wide; it renders no system attribute. Studies of earlier versions hold them
as user attributes ``epoch_NNN``, which every reader here still reads (:func:`epoch_metrics`,
:func:`stored_epochs`). A continuation with a checkpoint also carries the records and the
intermediate values of the epochs done before (:func:`attrs_for_retry`), so every epoch is
stored exactly once.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import BaseTrial, FrozenTrial, TrialState

from octtrain.errors import clip
from octtrain.tracking import json_safe
from search.optuna_compat import set_system_attr

SPACE_ATTR = "octsearch:space"
SPACE_FILE_ATTR = "octsearch:space_file"
CREATION_ID_ATTR = "octsearch:creation_id"

ENQUEUED_ATTR = "enqueued"
OVERRIDES_ATTR = "overrides"
UNFREEZE_ATTR = "unfreeze_at_epoch"
EPOCHS_ATTR = "epochs"
RUN_DIR_ATTR = "run_dir"
HOST_ATTR = "host"
DEVICES_ATTR = "devices"
BEST_EPOCH_ATTR = "best_epoch"
PRUNE_REASON_ATTR = "prune_reason"
PRUNE_KIND_ATTR = "prune_kind"
FAIL_REASON_ATTR = "fail_reason"
OUTPUT_TAIL_ATTR = "output_tail"

TEST_METRICS_ATTR = "test/metrics"
TEST_USES_ATTR = "test/uses"
PREEMPTED_ATTR = "preempted"
RESUME_FROM_ATTR = "resume_from"
RESUMES_TRIAL_ATTR = "resumes_trial"
UNPRUNED_ATTR = "unpruned"
RERUN_OF_ATTR = "rerun_of"

# what a re-queued stale or stopped trial keeps; the rest was its run's
KEPT_ON_RETRY = (ENQUEUED_ATTR, UNPRUNED_ATTR, RERUN_OF_ATTR)
EPOCH_PREFIX = "octsearch:epoch_"  # + NNN: a system attribute
LEGACY_EPOCH_PREFIX = "epoch_"  # + NNN: a user attribute, in studies of earlier versions


def epoch_attr(epoch: int) -> str:
    """Name of the trial system attribute that holds the metrics of ``epoch`` (0-based)."""
    return f"{EPOCH_PREFIX}{epoch:03d}"


def _epoch_of(key: str, prefix: str) -> int | None:
    number = key[len(prefix):]
    return int(number) if key.startswith(prefix) and number.isdigit() else None


# Study ----------------------------------------------------------------------------------------


def write_space(study: optuna.Study, canonical: dict[str, Any], source: str | None) -> str:
    """Store a new creation id and the space with a new study; the space goes last, as it
    publishes the study. Returns the creation id."""
    creation_id = uuid.uuid4().hex[:8]
    study.set_user_attr(CREATION_ID_ATTR, creation_id)
    study.set_user_attr(SPACE_FILE_ATTR, source or "")
    study.set_user_attr(SPACE_ATTR, canonical)
    return creation_id


def runs_folder(study: optuna.Study) -> str:
    """The folder of the study's run directories under ``--runs-dir``: ``NAME-CREATIONID``, the
    same for every worker of the study and different for a new study under the same name;
    ``NAME`` for a study stored before creation ids existed."""
    creation_id = study.user_attrs.get(CREATION_ID_ATTR)
    return f"{study.study_name}-{creation_id}" if creation_id else study.study_name


def trial_dir(root: Path, study: optuna.Study, number: int) -> Path:
    """``ROOT/NAME-CREATIONID/trial_NNNN``, absolute: trial ``number``'s run directory (``root``:
    ``--runs-dir``) or the folder of its resume checkpoint (``root``: ``--checkpoint-dir``)."""
    return (root / runs_folder(study) / f"trial_{number:04d}").resolve()


def trial_dirs(root: Path, study: optuna.Study) -> list[Path]:
    """Every trial directory of the study under ``root`` (those this host can see), by number."""
    return sorted((root / runs_folder(study)).glob("trial_[0-9][0-9][0-9][0-9]*"))


def stored_space_dict(study: optuna.Study) -> dict[str, Any] | None:
    """The canonical space stored with the study, or ``None`` (not made by octsearch, or not yet)."""
    raw = study.user_attrs.get(SPACE_ATTR)
    return raw if isinstance(raw, dict) else None


def write_test_result(study: optuna.Study, result: Mapping[str, Any], use: Mapping[str, Any]) -> None:
    """Store a test evaluation (NaN as null) and append ``use`` to the study's test-split uses."""
    study.set_user_attr(TEST_USES_ATTR, [*stored_test_uses(study), json_safe(dict(use))])
    study.set_user_attr(TEST_METRICS_ATTR, json_safe(dict(result)))


def stored_test_uses(study: optuna.Study) -> list[dict[str, Any]]:
    """Every recorded use of the study's test split, oldest first."""
    raw = study.user_attrs.get(TEST_USES_ATTR)
    return [u for u in raw if isinstance(u, dict)] if isinstance(raw, list) else []


# Trial: written ---------------------------------------------------------------------------------


def write_overrides(trial: optuna.Trial, overrides: Mapping[str, Any]) -> None:
    trial.set_user_attr(OVERRIDES_ATTR, dict(overrides))


def write_run(trial: optuna.Trial, *, unfreeze_at_epoch: int, epochs: int, run_dir: Path, host: str) -> None:
    """What the trial process is about to run: warm-up length, epoch budget, run directory, host."""
    write_schedule(trial, unfreeze_at_epoch=unfreeze_at_epoch, epochs=epochs)
    trial.set_user_attr(RUN_DIR_ATTR, str(run_dir))
    trial.set_user_attr(HOST_ATTR, host)


def write_schedule(trial: optuna.Trial, *, unfreeze_at_epoch: int, epochs: int) -> None:
    """What the pruners read of the trial's plan: the unfreeze epoch and the epoch budget."""
    trial.set_user_attr(UNFREEZE_ATTR, unfreeze_at_epoch)
    trial.set_user_attr(EPOCHS_ATTR, epochs)


def write_devices(trial: optuna.Trial, label: str) -> None:
    """The devices the trial runs on (its slot's), written when it is handed to the slot."""
    trial.set_user_attr(DEVICES_ATTR, label)


def write_epoch(trial: optuna.Trial, epoch: int, metrics: Mapping[str, Any]) -> None:
    """The trainer's metrics of one epoch, a system attribute; NaN and infinities stored as null."""
    set_system_attr(trial, epoch_attr(epoch), json_safe(metrics))


def record_epoch(trial: optuna.Trial, epoch: int, metrics: Mapping[str, Any], value: float) -> None:
    """One epoch of a running trial, stored: its metrics record, then its reported value (what
    the pruner reads). The one way an epoch reaches the study: from the trial process as it
    trains (:class:`search.trial.EpochReporter`) or, after an outage, from its queue file."""
    write_epoch(trial, epoch, metrics)
    trial.report(value, epoch)


def write_best_epoch(trial: optuna.Trial, epoch: int | None) -> None:
    trial.set_user_attr(BEST_EPOCH_ATTR, epoch)


def write_prune_reason(trial: optuna.Trial, reason: str | None, kind: str | None = None) -> None:
    """Why the trial was pruned, and which rule pruned it (``kind``; none: not known)."""
    trial.set_user_attr(PRUNE_REASON_ATTR, reason)
    if kind is not None:
        trial.set_user_attr(PRUNE_KIND_ATTR, kind)


def write_failure(trial: optuna.Trial, reason: str | None, output_tail: str | None = None) -> None:
    trial.set_user_attr(FAIL_REASON_ATTR, reason)
    if output_tail:
        trial.set_user_attr(OUTPUT_TAIL_ATTR, output_tail)


def write_stale_failure(storage: Any, trial_id: int, grace_s: float, retries: int) -> None:
    """Why a RUNNING trial is about to be failed as stale (no heartbeat for ``grace_s``), written
    as its ``fail_reason`` through ``storage`` (the trial is another process's)."""
    trial = storage.get_trial(trial_id)
    host = trial.user_attrs.get(HOST_ATTR)
    retried = len(trial.system_attrs.get("retry_history") or [])
    if preempted_checkpoint(trial) is not None:
        again = "its trial process had stopped with a resume checkpoint: re-queued to resume from it"
    elif resume_source(trial) is not None:
        again = "it was resuming a checkpoint: re-queued to resume from it again, if it is still there"
    elif retried < retries:
        again = "re-queued with the same parameters"
    else:
        again = f"not re-queued again (a retry of trial {retried_trial(trial)})"
    storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, (
        f"failed as stale: no heartbeat for {grace_s:g} s (its worker{f' on {host}' if host else ''} was killed, "
        f"its host went down, or it lost the database); {again}"))


def write_preempted(trial: optuna.Trial, info: Mapping[str, Any]) -> None:
    trial.set_user_attr(PREEMPTED_ATTR, dict(info))


# Trial: read ------------------------------------------------------------------------------------


def resume_source(trial: BaseTrial) -> str | None:
    """The resume checkpoint a re-queued preempted trial continues; None for a fresh trial."""
    value = trial.user_attrs.get(RESUME_FROM_ATTR)
    return str(value) if value else None


def runs_first(trial: FrozenTrial) -> bool:
    """A WAITING trial every worker takes before the others, whatever its number: the continuation
    of a trial stopped by a signal (its resume checkpoint, if any, waits on disk) or the retry of a
    trial failed as stale (Optuna's retry callback marks it with the ``failed_trial`` system
    attribute)."""
    return (resume_source(trial) is not None or retried_trial(trial) is not None
            or trial.user_attrs.get(RESUMES_TRIAL_ATTR) is not None)


def was_preempted(trial: BaseTrial) -> bool:
    """Whether the trial was stopped by a signal (and its configuration re-queued)."""
    return PREEMPTED_ATTR in trial.user_attrs


def preempted_checkpoint(trial: BaseTrial) -> tuple[str, int] | None:
    """A stopped trial's resume checkpoint and the epochs done before it, from its ``preempted``
    record; None when it has no record or the record names no checkpoint."""
    info = trial.user_attrs.get(PREEMPTED_ATTR)
    if not isinstance(info, Mapping) or not isinstance(info.get("checkpoint"), str):
        return None
    return info["checkpoint"], int(info.get("epochs_done") or 0)


def retried_trial(trial: FrozenTrial) -> int | None:
    """The number of the stale trial this one retries (Optuna's retry callback stores it as the
    ``failed_trial`` system attribute); None for a trial that retries none."""
    value = trial.system_attrs.get("failed_trial")
    return value if isinstance(value, int) else None


def epoch_metrics(trial: FrozenTrial, epoch: int) -> dict[str, Any] | None:
    """The stored metrics of ``epoch`` (where an earlier version stored them too), or ``None``."""
    metrics = trial.system_attrs.get(epoch_attr(epoch))
    if not isinstance(metrics, dict):
        metrics = trial.user_attrs.get(f"{LEGACY_EPOCH_PREFIX}{epoch:03d}")
    return metrics if isinstance(metrics, dict) else None


def unfreeze_at_epoch(trial: BaseTrial) -> int:
    """The epoch the trial's encoder unfreezes; ``-1`` (never) where none is stored."""
    value = trial.user_attrs.get(UNFREEZE_ATTR, -1)
    return value if isinstance(value, int) else -1


def epoch_budget(trial: BaseTrial) -> int | None:
    """The trial's epoch budget (``train.epochs``); ``None`` where none is stored."""
    value = trial.user_attrs.get(EPOCHS_ATTR)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def stored_best_epoch(trial: BaseTrial) -> int | None:
    value = trial.user_attrs.get(BEST_EPOCH_ATTR)
    return value if isinstance(value, int) else None


def stored_prune_kind(trial: BaseTrial) -> str | None:
    """Which rule pruned the trial, as the worker stored it; ``None`` where none is stored."""
    value = trial.user_attrs.get(PRUNE_KIND_ATTR)
    return str(value) if value else None


def unpruned(trial: BaseTrial) -> bool:
    """Whether the trial runs its whole budget, never asking the pruner (a rerun)."""
    return trial.user_attrs.get(UNPRUNED_ATTR) is True


def rerun_of(trial: BaseTrial) -> int | None:
    """The trial whose configuration this rerun runs again; ``None`` for any other trial."""
    value = trial.user_attrs.get(RERUN_OF_ATTR)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def end_reason(trial: BaseTrial) -> str:
    """Why the trial was pruned or failed; ``""`` for none."""
    attrs = trial.user_attrs
    return str(attrs.get(PRUNE_REASON_ATTR) or attrs.get(FAIL_REASON_ATTR) or "")


def stored_overrides(trial: BaseTrial) -> dict[str, Any]:
    """The trial's trainer overrides; its params for a trial stored without them."""
    overrides = trial.user_attrs.get(OVERRIDES_ATTR)
    return dict(overrides) if isinstance(overrides, dict) and overrides else dict(trial.params)


def stored_run_dir(trial: BaseTrial) -> str | None:
    value = trial.user_attrs.get(RUN_DIR_ATTR)
    return str(value) if value else None


def ran_on(trial: BaseTrial) -> str:
    """``host devices`` of the trial (what is stored of them; ``""`` for none)."""
    attrs = trial.user_attrs
    return " ".join(str(attrs[k]) for k in (HOST_ATTR, DEVICES_ATTR) if attrs.get(k))


def enqueued_name(trial: BaseTrial) -> str:
    """The name of an enqueued trial; ``""`` for a sampled one."""
    return str(trial.user_attrs.get(ENQUEUED_ATTR, ""))


def stored_epochs(trial: FrozenTrial) -> list[tuple[int, dict[str, Any]]]:
    """Every stored ``(epoch, metrics)`` of the trial (where an earlier version stored them too),
    in epoch order."""
    found: dict[int, dict[str, Any]] = {}
    for attrs, prefix in ((trial.user_attrs, LEGACY_EPOCH_PREFIX), (trial.system_attrs, EPOCH_PREFIX)):
        for key, value in attrs.items():
            epoch = _epoch_of(key, prefix)
            if epoch is not None and isinstance(value, dict):
                found[epoch] = value
    return sorted(found.items())


def attrs_for_retry(trial: FrozenTrial, epochs_done: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The user and system attributes a re-queued trial starts with: :data:`KEPT_ON_RETRY`, the
    system attributes that are not epoch records (Optuna's retry history), and the records of the
    first ``epochs_done`` epochs (a continuation's), stored where this version stores them."""
    user = {k: v for k, v in trial.user_attrs.items() if k in KEPT_ON_RETRY}
    system = {k: v for k, v in trial.system_attrs.items() if _epoch_of(k, EPOCH_PREFIX) is None}
    system.update({epoch_attr(e): m for e, m in stored_epochs(trial) if e < epochs_done})
    return user, system


def describe_trial(trial: FrozenTrial) -> str:
    """One line: ``trial 3 PRUNED after 3 epochs (0.2500) in 41 s: collapsed: ...``."""
    epochs = len(trial.intermediate_values)
    text = f"trial {trial.number} {trial.state.name} after {epochs} epoch{'s' * (epochs != 1)}"
    if trial.value is not None:
        text += f" ({trial.value:.4f})"
    if trial.duration is not None:
        text += f" in {trial.duration.total_seconds():.0f} s"
    reason = end_reason(trial)
    if reason and trial.state != TrialState.COMPLETE:
        text += f": {clip(reason)}"
    return text


def format_value(value: Any) -> str:
    """A parameter or metric for a table: floats to 3 significant digits, NaN as ``-``."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3g}"
    return str(value)
