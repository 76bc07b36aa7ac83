"""Study storage: one SQL database shared by every worker of a study.

``sqlite:///FILE`` is the embedded default (one host): the database runs in WAL mode so that
readers (the dashboard, a trial process reporting epochs) do not block the worker, and every
connection waits up to :data:`SQLITE_BUSY_TIMEOUT_S` for a lock instead of failing.
``postgresql+psycopg://`` and ``mysql+pymysql://`` serve many hosts; their connections are
pooled and pre-pinged, because a trial can outlast a server's idle timeout. ``postgresql://``
and ``mysql://`` are read as those drivers.

Workers record a heartbeat for their running trial (:func:`heartbeat`). A trial whose worker
stopped beating for :data:`GRACE_PERIOD_S` (a host lost, a worker killed with SIGKILL) is
failed by the next worker that asks for a trial and re-queued once more with the same
parameters (:class:`~optuna.storages.RetryHeartbeatStaleTrialCallback`).

``grpc://HOST:PORT`` is Optuna's gRPC storage proxy in front of one of those databases, for
many workers (:mod:`search.storage.grpc_client`; the proxy, :mod:`search.storage.grpc_server`, is
started by ``octsearch serve-storage``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar, Union

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from search.contract import attrs_for_retry, write_stale_failure
from search.errors import StorageError
from search.notices import notice
from search.optuna_compat import fail_stale_trials, no_experimental_warning, study_storage
from search.storage.continuation import queue_continuation, resumable_checkpoint, retire_checkpoint
from search.storage.retry import Outage, RetryingStorage, describe_cause, root_cause
from search.storage.urls import check_shared, redact

if TYPE_CHECKING:
    from search.storage.grpc_client import GrpcStorage

DEFAULT_STORAGE = "sqlite:///octsearch.db"  # a file in the working directory
SQLITE_BUSY_TIMEOUT_S = 60  # how long a connection waits for another writer's lock
HEARTBEAT_INTERVAL_S = 20  # a running trial's worker writes a heartbeat this often
GRACE_PERIOD_S = 120  # a RUNNING trial without a heartbeat for this long is failed
STALE_TRIAL_RETRIES = 1  # times a stale trial is re-queued with the same parameters
POOL = {"pool_size": 2, "max_overflow": 4, "pool_pre_ping": True, "pool_recycle": 1800}
CONNECT_TIMEOUT_S = 10
# MySQL drivers bound only the TCP connect with connect_timeout; the handshake and every later
# read wait forever on a server that accepts and never answers. These bound each read and write.
MYSQL_IO_TIMEOUT_S = 60
StudyStorage = Union[RDBStorage, "GrpcStorage"]  # a database, or the gRPC proxy in front of one

def _engine_kwargs(url: str, pool_size: int | None = None) -> dict[str, Any]:
    backend = sqlalchemy.engine.make_url(url).get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    pool = POOL if pool_size is None else {**POOL, "pool_size": pool_size}
    connect: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT_S}
    if backend in ("mysql", "mariadb"):
        connect.update(read_timeout=MYSQL_IO_TIMEOUT_S, write_timeout=MYSQL_IO_TIMEOUT_S)
    return {**pool, "connect_args": connect}


def _retry_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Re-queue a stale trial: its continuation when a resume checkpoint of it waits (its trial
    process stopped with one, or it was resuming one; :func:`resumable_checkpoint`), else its
    parameters without the per-epoch attributes of its run, once."""
    stopped = resumable_checkpoint(study, trial)
    if stopped is not None:
        queue_continuation(study, trial, *stopped)
        retire_checkpoint(trial, stopped[0])  # it resumed an older one and stopped again
        return
    trial.user_attrs, trial.system_attrs = attrs_for_retry(trial)
    with no_experimental_warning():
        RetryHeartbeatStaleTrialCallback(max_retry=STALE_TRIAL_RETRIES)(study, trial)


def fail_stale(study: optuna.Study) -> None:
    """Fail the study's stale trials (no heartbeat for :data:`GRACE_PERIOD_S`), each with its
    ``fail_reason``, and re-queue each once (:func:`_retry_stale`, the storage's callback)."""
    storage = study_storage(study)
    grace = float(getattr(storage, "grace_period", None) or GRACE_PERIOD_S)  # as the storage judges
    with no_experimental_warning():
        fail_stale_trials(study, lambda trial_id: write_stale_failure(storage, trial_id, grace,
                                                                      STALE_TRIAL_RETRIES))


def _enable_wal(url: str, create: bool) -> None:
    """Put the SQLite file in WAL mode (persistent) before any pooled connection opens it."""
    database = sqlalchemy.engine.make_url(url).database
    assert database, "check_shared refuses in-memory databases"
    if not create and not Path(database).exists():
        raise StorageError(f"no SQLite database {database!r} (from {url!r}) in "
                           f"{str(Path.cwd())!r}: pass the --storage URL of the study")
    if not Path(database).parent.exists():
        raise StorageError(f"cannot create {url!r}: folder {str(Path(database).parent)!r} "
                           "does not exist")

    def set_wal() -> None:
        with contextlib.closing(sqlite3.connect(database, timeout=SQLITE_BUSY_TIMEOUT_S)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")

    _retry_open_race(set_wal, url)


def open_storage(url: str, *, heartbeat: bool = True, create: bool = True,
                 pool_size: int | None = None, outage_s: float | None = None,
                 out: TextIO | None = None) -> StudyStorage:
    """An RDB storage with this project's settings, or a client of the gRPC proxy at
    ``grpc://HOST:PORT`` (a StorageError when it does not answer).

    ``heartbeat=True`` is for workers (they record heartbeats and fail stale trials); trial
    processes, reports and the dashboard open the same database without it. ``create=False``
    refuses to create a new SQLite file (review commands run in the wrong folder).
    ``pool_size``: pooled connections to a server database (the proxy serves many calls).
    ``outage_s``: ride out an unreachable database for that long (:mod:`search.storage.retry`; notices
    to ``out``, default stderr); ``None``: every call is made once.
    """
    url = check_shared(url)
    if url.startswith("grpc://"):
        from search.storage.grpc_client import open_grpc_storage

        return open_grpc_storage(url, heartbeat_interval=HEARTBEAT_INTERVAL_S if heartbeat else None,
                                 outage_s=outage_s, out=out)
    backend = sqlalchemy.engine.make_url(url).get_backend_name()
    if backend == "sqlite":
        _enable_wal(url, create)
    options: dict[str, Any] = {}
    if heartbeat:
        options = {
            "heartbeat_interval": HEARTBEAT_INTERVAL_S,
            "grace_period": GRACE_PERIOD_S,
            "heartbeat_stale_trial_callback": _retry_stale,
        }
    def build() -> RDBStorage:
        with no_experimental_warning():
            kind = RDBStorage if outage_s is None else RetryingStorage
            return kind(url, engine_kwargs=_engine_kwargs(url, pool_size), **options)

    storage = _retry_open_race(build, url)
    if isinstance(storage, RetryingStorage) and outage_s is not None:
        storage.outage = Outage(outage_s, out)
    return storage


OPEN_RACE_RETRIES = 5
T = TypeVar("T")


def _retry_open_race(open_fn: Callable[[], T], url: str) -> T:
    """``open_fn()``, again after a short wait when it lost a race with a concurrent opener;
    any other failure is a StorageError naming the (redacted) URL."""
    for attempt in range(OPEN_RACE_RETRIES + 1):
        try:
            return open_fn()
        except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, ImportError,
                optuna.exceptions.StorageInternalError) as err:  # Optuna wraps what its set-up hit
            cause = root_cause(err)
            if attempt < OPEN_RACE_RETRIES and _lost_open_race(cause):
                time.sleep(0.2 * (attempt + 1))  # the other opener finishes its set-up
                continue
            raise StorageError(f"cannot open storage {redact(url)!r}: {cause}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _lost_open_race(cause: BaseException) -> bool:
    """Workers opening a new database at the same instant all create Optuna's tables (and, on
    SQLite, switch it to WAL): all but one fail with "already exists" / a duplicate key, or on
    SQLite with "database is locked", which SQLite returns at once rather than wait when a lock
    upgrade could deadlock, or with "UNIQUE constraint failed" (SQLite's duplicate key, e.g.
    of Optuna's alembic version row). Each succeeds once the other has finished."""
    text = str(cause).lower()
    return any(sign in text for sign in ("already exists", "duplicate", "unique constraint",
                                         "database is locked"))


@contextmanager
def asking(storage: Any) -> Iterator[None]:
    """Around ``study.ask()``: on a SQLite file, one ask at a time on the host.

    ``ask`` takes a WAITING trial (enqueued, resumed, put back) by reading its state and then
    setting it RUNNING; server databases lock the row in between (SELECT ... FOR UPDATE), but
    SQLite reads outside the write transaction, so two processes asking at the same instant
    could both take the same trial. An exclusive ``flock`` on ``FILE.ask-lock`` serializes
    them (SQLite serves one host, so a local file lock reaches every worker). ``storage``:
    an Optuna storage, as ``study._storage`` holds it (possibly cached)."""
    backend = getattr(storage, "_backend", storage)
    url = str(getattr(backend, "url", ""))
    database = sqlalchemy.engine.make_url(url).database if url.startswith("sqlite") else None
    if not database:
        yield
        return
    import fcntl

    with open(f"{database}.ask-lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def heartbeat(storage: StudyStorage, trial_id: int, *, out: TextIO | None = None) -> Iterator[None]:
    """Record the trial's heartbeat every heartbeat interval while the block runs.

    Optuna records heartbeats only inside ``Study.optimize``; a worker that asks, runs the
    trial in a child process and tells keeps the heartbeat itself. A beat that fails (the
    database is unreachable: Optuna raises ``StorageInternalError``, SQLAlchemy its own errors)
    is retried at the next beat, so the thread outlives an outage; the grace period covers
    several missed beats. ``out`` (default stderr) gets one line when beats start failing and
    one when they succeed again.
    """
    interval = storage.get_heartbeat_interval()
    if interval is None:
        yield
        return
    stop = threading.Event()
    beat = _Beat(storage, trial_id, out)

    def loop() -> None:
        while True:
            beat()
            if stop.wait(interval):
                return

    thread = threading.Thread(target=loop, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


class _Beat:
    """One heartbeat write; remembers an outage so that it is reported once, not every beat."""

    def __init__(self, storage: StudyStorage, trial_id: int, out: TextIO | None) -> None:
        self.storage, self.trial_id, self.out = storage, trial_id, out
        self.failing_since: float | None = None  # monotonic time of the first failed beat

    def __call__(self) -> None:
        try:
            self.storage.record_heartbeat(self.trial_id)
        except Exception as err:  # noqa: BLE001 - any storage failure: retried at the next beat
            if self.failing_since is None:
                self.failing_since = time.monotonic()
                self._say(f"heartbeat of trial id {self.trial_id} failed, retrying every beat: "
                          f"{describe_cause(err)}")
            return
        if self.failing_since is not None:
            lasted = time.monotonic() - self.failing_since
            self.failing_since = None
            self._say(f"heartbeat of trial id {self.trial_id} recorded again after {lasted:.0f} s")

    def _say(self, text: str) -> None:
        notice(self.out if self.out is not None else sys.stderr, text)
