"""Riding out a database outage: storage calls retried with backoff, with a one-line notice.

A worker and a trial process talk to one SQL database; a server restart, a failover or a
network blip makes every call fail for a while. :class:`RetryingStorage` is Optuna's
``RDBStorage`` whose calls, when they fail for a reason that passes (:func:`is_outage`), are
retried with exponential backoff until the database has been unreachable for ``outage_s``
seconds (default :data:`DEFAULT_OUTAGE_S`); then :class:`DatabaseUnreachableError`. The
outage is timed from the first failed call of this process, so a second call in the same
outage does not wait a full ``outage_s`` again. One line says that the database is
unreachable, one line that it is back; no traceback.

Only a lost connection is retried (SQLAlchemy's ``OperationalError``, ``InterfaceError``,
``DisconnectionError``, pool timeouts, or a driver error that invalidated the connection),
also when Optuna wraps it in ``StorageInternalError`` (Optuna 5 wraps every SQLAlchemy error
raised inside its sessions). Anything else (invalid data, a finished trial, a missing
study) is raised at once.

Within :func:`single_attempt` (the trial process's epoch reports) a call is made once: the
caller queues what failed and carries on (:mod:`search.trial.reporter`).

A retried write whose commit reached the server but whose answer was lost is repeated:
attribute and intermediate-value writes are idempotent, a repeated ``tell`` finds the trial
finished (``UpdateFinishedTrialError``, which the worker reads as "already told"), and only a
repeated ``create_new_trial`` (``ask``) can leave an extra RUNNING trial behind.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO, TypeVar

import sqlalchemy
from optuna.storages import RDBStorage

from octtrain.errors import clip, one_line
from search.errors import WorkerError
from search.notices import notice
from search.optuna_compat import RDB_PRIVATE_CALLS

DEFAULT_OUTAGE_S = 120.0  # how long a worker or trial rides out an unreachable database
OUTAGE_ENV = "OCTSEARCH_DB_OUTAGE_S"  # the worker's limit, passed to its trial processes
FIRST_WAIT_S = 0.5  # the first retry waits this long, doubling up to MAX_WAIT_S
MAX_WAIT_S = 8.0

_TRANSIENT = (
    sqlalchemy.exc.OperationalError,  # connection refused or lost, server shutting down
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection in time
)

T = TypeVar("T")


class DatabaseUnreachableError(WorkerError):
    """The study's database stayed unreachable for longer than the outage limit."""


def is_outage(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from) is a lost database connection."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _TRANSIENT):
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError) and current.connection_invalidated:
            return True
        if _grpc_unavailable(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _grpc_unavailable(err: BaseException) -> bool:
    """A gRPC call that found no proxy (down, restarting, unreachable): StatusCode.UNAVAILABLE."""
    code = getattr(err, "code", None)
    if not callable(code) or not type(err).__module__.startswith("grpc"):
        return False
    try:
        return getattr(code(), "name", "") == "UNAVAILABLE"
    except Exception:  # noqa: BLE001 - not a finished call: not one we can judge
        return False


def outage_limit_from_env(default: float = DEFAULT_OUTAGE_S) -> float:
    """The outage limit a worker passed to this trial process (:data:`OUTAGE_ENV`)."""
    raw = os.environ.get(OUTAGE_ENV)
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if value >= 0 else default


_local = threading.local()  # .depth: nesting of retried calls; .once: single_attempt active


@contextmanager
def single_attempt() -> Iterator[None]:
    """Within the block, storage calls of this thread are made once, not retried."""
    before = getattr(_local, "once", False)
    _local.once = True
    try:
        yield
    finally:
        _local.once = before


class Outage:
    """The state of one process's connection to its database: since when it is unreachable,
    and the one-line notices when that starts and ends."""

    def __init__(self, limit_s: float, out: TextIO | None = None) -> None:
        if not limit_s >= 0:
            raise ValueError(f"limit_s must be >= 0, but got {limit_s=}.")
        self.limit_s = limit_s
        self.out = out
        self._since: float | None = None  # monotonic time of the first failed call
        self._lock = threading.Lock()

    def failed(self, err: BaseException, what: str) -> float:
        """Note a failed call; returns the seconds left before giving up."""
        with self._lock:
            now = time.monotonic()
            if self._since is None:
                self._since = now
                once = getattr(_local, "once", False)  # the reporter: it queues and goes on
                queued = "epoch reports queued, training goes on; " if once else ""
                self._say(f"database unreachable ({what}: {describe_cause(err)}); "
                          f"{queued}retrying for up to {self.limit_s:g} s")
            return self._since + self.limit_s - now

    def succeeded(self) -> None:
        if self._since is None:
            return
        with self._lock:
            if self._since is not None:
                self._say(f"database reachable again after {time.monotonic() - self._since:.0f} s")
                self._since = None

    def call(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, retried with backoff while the database is unreachable (see module)."""
        wait = FIRST_WAIT_S
        while True:
            try:
                result = fn()
            except Exception as err:
                if not is_outage(err):
                    raise
                left = self.failed(err, what)
                if getattr(_local, "once", False):
                    raise
                if left <= 0:
                    raise DatabaseUnreachableError(
                        f"the database was unreachable for more than {self.limit_s:g} s "
                        f"({what}: {describe_cause(err)})") from err
                time.sleep(min(wait, left))
                wait = min(wait * 2, MAX_WAIT_S)
                continue
            self.succeeded()
            return result

    def _say(self, text: str) -> None:
        notice(self.out if self.out is not None else sys.stderr, text)


def describe_cause(err: BaseException) -> str:
    """What a one-line notice quotes for a failed storage call: the driver's error (not Optuna's
    ``StorageInternalError``, which blames "invalid data in the commit" for a lost connection
    too), on one line, clipped."""
    return clip(one_line(root_cause(err)))


def root_cause(err: BaseException) -> BaseException:
    """The driver's error under SQLAlchemy's and Optuna's wrappers (what names the cause)."""
    while True:
        inner = getattr(err, "orig", None) or err.__cause__
        if not isinstance(inner, BaseException) or inner is err:
            return err
        err = inner


# Every method of Optuna's storage API that reads or writes the database, except record_heartbeat
# (the heartbeat thread retries at its next beat: search.storage.sql.heartbeat): what the gRPC
# proxy's client has too.
RETRIED_API = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies", "create_new_trial",
    "set_trial_param", "get_trial_param", "set_trial_state_values",
    "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
    "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "get_best_trial",
)
RETRIED = (*RETRIED_API, *RDB_PRIVATE_CALLS)  # RDBStorage's: also the private calls it makes


def retried(base: type, name: str) -> Callable[..., Any]:
    """``base.name`` retried while the database is unreachable (``self.outage``, see module)."""
    method = getattr(base, name)

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(_local, "depth", 0)
        if depth:  # inside another retried call of this storage: that one retries
            return method(self, *args, **kwargs)
        _local.depth = 1
        try:
            return self.outage.call(lambda: method(self, *args, **kwargs), name.strip("_"))
        finally:
            _local.depth = 0

    return call


class RetryingStorage(RDBStorage):
    """``RDBStorage`` whose database calls ride out an outage (:class:`Outage`).

    Set :attr:`outage` after construction (``RDBStorage.__init__`` takes no extra argument);
    :func:`search.storage.sql.open_storage` does.
    """

    outage: Outage = Outage(DEFAULT_OUTAGE_S)


for _name in RETRIED:
    setattr(RetryingStorage, _name, retried(RDBStorage, _name))
