"""Every private Optuna name octsearch uses, in one place.

Optuna has no public way to do a few things octsearch needs: the storage a study holds, a
trial's storage id, a trial taken over by another process, the cached storage the gRPC proxy
serves (and its database read, which octsearch coalesces), the heartbeat base class, the
proxy's generated servicer, and the RDB methods that touch the database under a private name
(which the outage retry wraps). An Optuna release that moves one of them fails here, in
:func:`missing` (run by ``tests/search/test_optuna_compat.py``), with the symbol's name, rather
than somewhere in a worker. :data:`PRIVATE_NAMES` lists them all.
"""

from __future__ import annotations

import copy
import datetime
import importlib
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat

__all__ = ["PRIVATE_NAMES", "RDB_PRIVATE_CALLS", "BaseHeartbeat", "CachedStorage", "StaleTrialsFailedElsewhere",
           "add_proxy_service", "claim_waiting", "fail_stale_trials", "frozen", "latest_trial", "missing",
           "never_beaten_trial_ids", "no_experimental_warning",
           "put_back", "set_system_attr", "study_storage", "take_over", "trial_id"]

# (module, attribute path): every private Optuna name used below.
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("optuna.study", "Study._storage"),
    ("optuna.trial", "Trial._trial_id"),
    ("optuna.trial", "Trial._get_latest_trial"),
    ("optuna.trial", "Trial._cached_frozen_trial"),
    ("optuna.storages", "_CachedStorage"),
    ("optuna.storages", "_CachedStorage._read_trials_from_remote_storage"),
    ("optuna.storages", "_CachedStorage._backend"),
    ("optuna.storages._heartbeat", "BaseHeartbeat"),
    ("optuna.storages._grpc.servicer", "OptunaStorageProxyService"),
    ("optuna.storages._grpc.auto_generated.api_pb2_grpc", "add_StorageServiceServicer_to_server"),
    ("optuna.storages", "RDBStorage._create_new_trial"),
    ("optuna.storages", "RDBStorage._set_trial_param"),
    ("optuna.storages", "RDBStorage._get_trials"),
    ("optuna.storages", "RDBStorage._get_best_trial_id"),
    ("optuna.storages", "RDBStorage._get_stale_trial_ids"),
    # and RDBStorage's tables trials and trial_heartbeats (never_beaten_trial_ids)
)
# RDBStorage's database calls under a private name (see search/storage/retry.py).
RDB_PRIVATE_CALLS = ("_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id",
                     "_get_stale_trial_ids")


def missing() -> list[str]:
    """The names of :data:`PRIVATE_NAMES` that the installed Optuna lacks (empty when all are there)."""
    gone = []
    for module, path in PRIVATE_NAMES:
        try:
            obj: Any = importlib.import_module(module)
        except ImportError:
            gone.append(f"{module} (module)")
            continue
        for part in path.split("."):
            if not hasattr(obj, part) and not _is_slot(obj, part):
                gone.append(f"{module}.{path}")
                break
            obj = getattr(obj, part, None)
    return gone


def _is_slot(cls: Any, name: str) -> bool:
    """An instance attribute set in ``__init__`` (``Study._storage``, ``Trial._trial_id``)."""
    init = getattr(cls, "__init__", None)
    code = getattr(init, "__code__", None)
    return code is not None and name in code.co_names


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage a study reads and writes (possibly Optuna's cache in front of it)."""
    return study._storage  # type: ignore[no-any-return]


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's id in its storage (not its number within the study)."""
    return trial._trial_id  # type: ignore[union-attr,no-any-return]


def frozen(study: optuna.Study, trial: optuna.Trial) -> optuna.trial.FrozenTrial:
    """The trial as stored now."""
    return study_storage(study).get_trial(trial_id(trial))


def take_over(study: optuna.Study, trial_id: int) -> optuna.Trial:
    """The RUNNING trial ``trial_id`` as a :class:`optuna.Trial` of this process (another one
    asked it): Optuna's own constructor, which ``ask`` uses."""
    return optuna.trial.Trial(study, trial_id)


def latest_trial(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """Optuna's own copy of the trial with its reports, as ``trial.should_prune`` hands the
    pruner (no database read); None if this Optuna has no such method. Its system attributes are
    the ones read when the trial was taken plus those this process wrote (:func:`set_system_attr`),
    not Optuna's lazy copy, which reads the database when first used."""
    latest = getattr(trial, "_get_latest_trial", None)
    if not callable(latest):
        return None
    frozen: optuna.trial.FrozenTrial = latest()
    cached = getattr(trial, "_cached_frozen_trial", None)
    if cached is not None:
        frozen.system_attrs = dict(cached.system_attrs)
    return frozen


def set_system_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    """A system attribute of a running trial, through its storage's public API (Optuna 5 has no
    ``Trial.set_system_attr``), also in the trial's own copy, as Optuna's ``set_user_attr`` does."""
    trial.storage.set_trial_system_attr(trial_id(trial), key, value)
    cached = getattr(trial, "_cached_frozen_trial", None)
    if cached is not None:
        cached.system_attrs[key] = value


def claim_waiting(study: optuna.Study,
                  first: Callable[[optuna.trial.FrozenTrial], bool]) -> optuna.Trial | None:
    """Take the lowest-numbered WAITING trial for which ``first`` holds, as ``study.ask`` takes a
    WAITING trial: a compare-and-set to RUNNING that fails when another worker took it first (a row
    lock on PostgreSQL and MySQL; on SQLite callers hold :func:`search.storage.asking`). None when no
    such trial could be taken; ``study.ask`` then takes the rest in Optuna's order."""
    storage = study_storage(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    waiting = storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    for candidate in sorted((t for t in waiting if first(t)), key=lambda t: t.number):
        try:
            if storage.set_trial_state_values(trial_id(candidate), optuna.trial.TrialState.RUNNING):
                return take_over(study, trial_id(candidate))
        except optuna.exceptions.UpdateFinishedTrialError:  # finished meanwhile (failed as stale)
            continue
    return None


def fail_stale_trials(study: optuna.Study, before_fail: Callable[[int], None]) -> None:
    """Optuna's ``fail_stale_trials``, step for step (the storage's stale trials set FAIL, then its
    stale-trial callback on each), calling ``before_fail(trial_id)`` while a stale trial is still
    RUNNING: the attributes of a FAIL trial can no longer be written, so this is where it records
    why it failed."""
    storage = study_storage(study)
    if not isinstance(storage, BaseHeartbeat) or storage.get_heartbeat_interval() is None:
        return
    failed: list[int] = []
    study_id = storage.get_study_id_from_name(study.study_name)
    stale = storage._get_stale_trial_ids(study_id) + never_beaten_trial_ids(storage, study_id)
    for stale_id in stale:
        try:
            before_fail(stale_id)
            if storage.set_trial_state_values(stale_id, state=optuna.trial.TrialState.FAIL):
                failed.append(stale_id)
        except optuna.exceptions.UpdateFinishedTrialError:  # another process failed it first
            continue
    callback = storage.get_heartbeat_stale_trial_callback()
    if callback is not None:
        for failed_id in failed:
            callback(study, copy.deepcopy(storage.get_trial(failed_id)))


# Optuna's tables (its RDB schema), read by never_beaten_trial_ids.
NEVER_BEATEN = sqlalchemy.text(
    "SELECT t.trial_id FROM trials t LEFT JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
    "WHERE t.study_id = :study_id AND t.state = 'RUNNING' AND h.trial_id IS NULL "
    "AND t.datetime_start < :cutoff")


def never_beaten_trial_ids(storage: BaseStorage, study_id: int) -> list[int]:
    """RUNNING trials of the study that never sent a heartbeat and started more than the grace
    period ago: their worker died between ``ask`` and its first beat (a SIGKILL, found by the
    chaos soak). Optuna's stale check reads only trials with a heartbeat, so these stayed RUNNING
    for ever and the study never reached N. Empty for a storage without the heartbeat table, or
    while the database is unreachable (the next sweep looks again)."""
    if isinstance(storage, _CachedStorage):  # what create_study and load_study hand a Study
        storage = storage._backend
    interval = storage.get_heartbeat_interval() if isinstance(storage, optuna.storages.RDBStorage) else None
    if not isinstance(storage, optuna.storages.RDBStorage) or interval is None:
        return []
    grace = storage.grace_period or 2 * interval
    cutoff = datetime.datetime.now() - datetime.timedelta(seconds=grace)  # as Optuna stores it: local
    try:
        with storage.engine.connect() as conn:
            return [int(row[0]) for row in conn.execute(NEVER_BEATEN, {"study_id": study_id, "cutoff": cutoff})]
    except sqlalchemy.exc.SQLAlchemyError:
        return []


def put_back(study: optuna.Study, trial: optuna.Trial) -> None:
    """A RUNNING trial back in the queue (WAITING) for the next ``ask``."""
    study_storage(study).set_trial_state_values(trial_id(trial), optuna.trial.TrialState.WAITING)


@contextmanager
def no_experimental_warning() -> Iterator[None]:
    """Optuna's ExperimentalWarning silenced (heartbeats, the gRPC proxy and a few samplers
    are marked experimental; a user can do nothing about it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


class CachedStorage(_CachedStorage):
    """Optuna's cached RDB storage (what its gRPC proxy serves), with its database read of a
    study's unfinished trials as the public :meth:`read_trials` to override."""

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        self.read_trials(study_id)

    def read_trials(self, study_id: int) -> None:
        super()._read_trials_from_remote_storage(study_id)


class StaleTrialsFailedElsewhere(BaseHeartbeat):
    """Optuna's heartbeat protocol for a client whose stale trials another process fails (the
    gRPC proxy sweeps them): Optuna's ``fail_stale_trials`` finds none through this storage."""

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return []


def add_proxy_service(server: Any, storage: BaseStorage) -> None:
    """Optuna's gRPC storage service for ``storage``, added to a ``grpc.server``."""
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)

