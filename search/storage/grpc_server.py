"""Optuna's gRPC storage proxy: one process holds the database connections, many workers talk
to it (``octsearch serve-storage``, and ``--storage grpc://HOST:PORT`` everywhere else).

Hundreds of workers, each with a trial process reporting epochs, would otherwise each hold
their own pool of database connections; behind the proxy the database sees one client whose
pool is :data:`PROXY_THREADS` connections, and the proxy caches finished trials. Reads of a
study's unfinished trials that arrive together share one database read
(:meth:`_HeartbeatRelay.read_trials`): every trial process reads them for
its pruner each epoch, and Optuna's cache does each such read alone, under its lock.

Heartbeats: Optuna's :class:`~optuna.storages.GrpcStorageProxy` has none (its protocol has no
heartbeat call), so a worker lost behind a bare proxy would leave its trial RUNNING for ever.
Here the client (:class:`GrpcStorage`) records a heartbeat as the trial system attribute
:data:`HEARTBEAT_ATTR`, which the proxy's storage (:class:`_HeartbeatRelay`) turns into the
database's own heartbeat (server time, as for a direct connection); the proxy fails stale
trials of every study and re-queues them (:func:`_sweep_stale_trials`), the job each worker
does itself when it talks to the database directly.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TextIO

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from octtrain.errors import one_line
from search.errors import OctsearchError, StorageError
from search.notices import notice
from search.optuna_compat import CachedStorage, add_proxy_service
from search.storage.grpc_client import HEARTBEAT_ATTR
from search.storage.retry import DEFAULT_OUTAGE_S, describe_cause
from search.storage.sql import HEARTBEAT_INTERVAL_S, fail_stale, open_storage
from search.storage.urls import grpc_url, is_grpc_url, redact

PROXY_THREADS = 16  # concurrent calls the proxy serves; also its database connections


class _HeartbeatRelay(CachedStorage):
    """The proxy's storage: Optuna's cached RDB storage (what ``run_grpc_proxy_server`` asks
    for), with a client's heartbeat attribute recorded as the database's heartbeat."""

    def __init__(self, backend: RDBStorage) -> None:
        super().__init__(backend)
        self._state_lock = threading.Lock()
        self._reads = threading.Condition()
        self._reads_started: dict[int, int] = {}  # per study: reads of the database started,
        self._reads_done: dict[int, int] = {}  # and the number of the last one finished
        self._reading: set[int] = set()  # studies being read now

    def read_trials(self, study_id: int) -> None:
        """Bring the study's cached trials up to date: one database read for every caller that
        arrives while a read is running, instead of one each, queued on the cache's lock.

        A caller needs a read that *starts* after it arrived (so it sees every write that came
        before its call, its own included): the one running may be too old, so the callers
        that arrive meanwhile wait for it to end and then share the next. A read that fails
        raises in its own caller; the waiting ones start another.
        """
        with self._reads:
            needed = self._reads_started.get(study_id, 0) + 1
            while self._reads_done.get(study_id, 0) < needed:
                if study_id not in self._reading:
                    self._reading.add(study_id)
                    self._reads_started[study_id] = number = self._reads_started.get(study_id, 0) + 1
                    break
                self._reads.wait()
            else:
                return  # a read that started after this call finished meanwhile
        try:
            super().read_trials(study_id)
            done = True
        except BaseException:
            done = False
            raise
        finally:
            with self._reads:
                self._reading.discard(study_id)
                if done:
                    self._reads_done[study_id] = number
                self._reads.notify_all()

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values: Sequence[float] | None = None) -> bool:
        # One state change at a time: on SQLite (no SELECT ... FOR UPDATE) two workers asking
        # at once could both take the same WAITING (enqueued) trial; state changes are rare.
        with self._state_lock:
            return super().set_trial_state_values(trial_id, state, values)

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if key == HEARTBEAT_ATTR:
            self.record_heartbeat(trial_id)
        else:
            super().set_trial_system_attr(trial_id, key, value)


def _sweep_stale_trials(storage: _HeartbeatRelay, out: TextIO) -> None:
    """Fail (and re-queue, by the storage's callback) the stale trials of every study; a sweep
    that cannot reach the database says so once and is tried again at the next interval."""
    try:
        for name in optuna.study.get_all_study_names(storage):
            study = optuna.load_study(study_name=name, storage=storage)
            fail_stale(study)
    except Exception as err:  # noqa: BLE001 - any storage failure: the next sweep tries again
        notice(out, f"stale-trial sweep failed, retrying: {describe_cause(err)}")


def _refuse_a_busy_port(host: str, port: int) -> None:
    """One line when another process listens on ``host:port`` (a plain bind, no reuse)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError as err:
            raise OctsearchError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def _make_server(storage: _HeartbeatRelay, host: str, port: int) -> Any:
    """Optuna's proxy service on ``host:port`` (what ``run_grpc_proxy_server`` builds), but
    refusing a port another process serves: gRPC's default SO_REUSEPORT would let a second
    proxy share it and split the workers between two caches."""
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # our one-line errors say it; not C logs
    _refuse_a_busy_port(host, port)  # before gRPC, whose C core may log the failure itself
    import grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=PROXY_THREADS),
                         options=[("grpc.so_reuseport", 0)])
    add_proxy_service(server, storage)
    try:
        server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as err:  # grpc: "Failed to bind to address ..."
        raise OctsearchError(f"cannot listen on {host}:{port}: {one_line(err)}") from None
    return server


def serve(storage_url: str, host: str, port: int, *, outage_s: float = DEFAULT_OUTAGE_S,
          out: TextIO | None = None) -> None:
    """Serve the storage at ``storage_url`` on ``host:port`` until interrupted (Ctrl-C or
    SIGTERM raise KeyboardInterrupt in this thread); in-flight calls get a short grace. A call
    that finds the database unreachable is retried for up to ``outage_s`` (its client waits),
    as a worker's own would be: one line when the outage starts, one when it ends."""
    out = out if out is not None else sys.stderr  # the current one (tests capture it)
    if is_grpc_url(storage_url):
        raise StorageError("serve-storage needs the database URL (sqlite:///FILE, "
                           "postgresql+psycopg://... or mysql+pymysql://...), not a proxy's")
    rdb = open_storage(storage_url, pool_size=PROXY_THREADS, outage_s=outage_s, out=out)
    assert isinstance(rdb, RDBStorage)
    relay = _HeartbeatRelay(rdb)
    server = _make_server(relay, host, port)
    server.start()
    out.write(f"octsearch: storage proxy for {redact(storage_url)} on {grpc_url(host, port)}: "
              f"use --storage {grpc_url(host, port)} (Ctrl-C to stop)\n")
    out.flush()
    stop = threading.Event()

    def sweep() -> None:
        while not stop.wait(HEARTBEAT_INTERVAL_S):
            _sweep_stale_trials(relay, out)

    threading.Thread(target=sweep, name="stale-trial-sweep", daemon=True).start()
    try:
        server.wait_for_termination()
    finally:
        stop.set()
        server.stop(grace=2.0).wait()
        rdb.engine.dispose()
