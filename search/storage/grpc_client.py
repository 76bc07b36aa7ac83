"""The client of Optuna's gRPC storage proxy (``--storage grpc://HOST:PORT``), with heartbeats.

Optuna's :class:`~optuna.storages.GrpcStorageProxy` has no heartbeat call, so a worker lost
behind a bare proxy would leave its trial RUNNING for ever. :class:`GrpcStorage` records a
heartbeat as the trial system attribute :data:`HEARTBEAT_ATTR`, which the proxy
(:mod:`search.storage.grpc_server`) turns into the database's own heartbeat.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TextIO

import optuna
from optuna.storages import GrpcStorageProxy
from optuna.trial import FrozenTrial

from search.errors import StorageError
from search.optuna_compat import StaleTrialsFailedElsewhere, no_experimental_warning
from search.storage.retry import DEFAULT_OUTAGE_S, RETRIED_API, Outage, retried
from search.storage.urls import grpc_url, parse_grpc_url

READY_TIMEOUT_S = 10.0  # how long a client waits for the proxy to answer before giving up
HEARTBEAT_ATTR = "octsearch:heartbeat"  # a client's heartbeat, relayed to the database's


class GrpcStorage(GrpcStorageProxy, StaleTrialsFailedElsewhere):
    """Optuna's proxy client, with heartbeats (see the module docstring) and a ``url``."""

    def __init__(self, *, host: str, port: int, heartbeat_interval: int | None) -> None:
        with no_experimental_warning():
            super().__init__(host=host, port=port)
        self.url = grpc_url(host, port)
        self._heartbeat_interval = heartbeat_interval

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, True)

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[optuna.Study, FrozenTrial], None] | None:
        return None


class RetryingGrpcStorage(GrpcStorage):
    """A client whose calls ride out a proxy that does not answer (restarting, unreachable:
    gRPC's UNAVAILABLE) for up to ``outage.limit_s``, as :class:`RetryingStorage` does for a
    database; the proxy itself rides out an outage of its database (``serve-storage
    --db-outage-s``)."""

    outage: Outage = Outage(DEFAULT_OUTAGE_S)


for _name in RETRIED_API:
    setattr(RetryingGrpcStorage, _name, retried(GrpcStorageProxy, _name))


def open_grpc_storage(url: str, *, heartbeat_interval: int | None, outage_s: float | None = None,
                      out: TextIO | None = None) -> GrpcStorage:
    """A client of the proxy at ``url``, or a StorageError when it does not answer within
    :data:`READY_TIMEOUT_S` (not started, wrong address, or grpcio missing). ``outage_s``: ride
    out a proxy that stops answering for that long (notices to ``out``); None: each call once."""
    host, port = parse_grpc_url(url)
    try:
        import grpc  # noqa: F401 - Optuna imports it lazily; say what is missing, once
    except ImportError:
        raise StorageError("the gRPC storage proxy needs grpcio: pip install grpcio") from None
    try:  # a refused connection is known at once; gRPC would keep retrying until the timeout
        socket.create_connection((host, port), timeout=READY_TIMEOUT_S).close()
    except OSError as err:
        raise StorageError(f"no storage proxy at {grpc_url(host, port)} ({err.strerror or err}): "
                           "start one with `octsearch serve-storage --storage URL`") from None
    if outage_s is None:
        storage = GrpcStorage(host=host, port=port, heartbeat_interval=heartbeat_interval)
    else:
        storage = RetryingGrpcStorage(host=host, port=port, heartbeat_interval=heartbeat_interval)
        storage.outage = Outage(outage_s, out)
    try:
        storage.wait_server_ready(timeout=READY_TIMEOUT_S)
    except ConnectionError:
        storage.close()
        raise StorageError(f"no storage proxy answers at {storage.url} within {READY_TIMEOUT_S:g} s: "
                           "start one with `octsearch serve-storage --storage URL`") from None
    return storage
