"""Many workers through Optuna's gRPC storage proxy (search/storage/grpc_server.py, `octsearch serve-storage`).

Each test that needs a proxy starts `octsearch serve-storage` itself on a free port, in front of
a fresh SQLite file or the PostgreSQL test server, and stops it (SIGTERM, exit 143) afterwards.
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from search_testing import (
    drop_study,
    fake_env,
    free_port,
    octsearch_command,
    reachable_server,
    storage_proxy,
    write_cli_space,
)

from search.storage.grpc_client import HEARTBEAT_ATTR
from search.storage.grpc_server import _HeartbeatRelay
from search.storage.sql import fail_stale, open_storage
from search.study.counting import FINISHED


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(database URL, unique study name); the study is deleted from the database afterwards."""
    url = f"sqlite:///{tmp_path / 'study.db'}" if request.param == "sqlite" else reachable_server("postgres")
    name = f"grpc-{uuid.uuid4().hex[:10]}"
    yield url, name
    drop_study(url, name)


@pytest.fixture
def proxy(database: tuple[str, str], tmp_path: Path) -> Iterator[str]:
    """`octsearch serve-storage` in front of the database; its grpc:// URL."""
    with storage_proxy(database[0], tmp_path) as url:
        yield url


def test_four_workers_through_one_proxy_finish_the_study(
    proxy: str, database: tuple[str, str], tmp_path: Path
) -> None:
    url, name = database
    space = write_cli_space(tmp_path / "space.yaml")
    n_trials = 6
    procs = [subprocess.Popen(octsearch_command("run", "--space", str(space), "--trials", str(n_trials),
                                                "--study", name, "--seed", str(i), "--storage", proxy),
                              cwd=tmp_path, env=fake_env(FAKE_FIT_EPOCH_S="0.05"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(4)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output
    assert sum("trial " in o and " started:" in o for o in outputs) >= 2  # the work was shared
    storage = open_storage(url, heartbeat=False)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    storage.engine.dispose()
    states = [t.state for t in trials]
    assert sum(s in FINISHED for s in states) == n_trials  # search.study.counting: never one more
    assert optuna.trial.TrialState.RUNNING not in states
    assert all(len(t.intermediate_values) >= 3 for t in trials if t.state in FINISHED)  # epochs reported


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_heartbeats_through_the_proxy_reach_the_database_and_stale_trials_are_retried(
    proxy: str, database: tuple[str, str]
) -> None:
    url, name = database
    client = open_storage(proxy)  # a worker's storage: heartbeats on
    study = optuna.create_study(storage=client, study_name=name)
    trial = study.ask()
    client.record_heartbeat(trial._trial_id)
    assert HEARTBEAT_ATTR not in client.get_trial(trial._trial_id).system_attrs  # relayed, not stored
    direct = open_storage(url)
    assert isinstance(direct, optuna.storages.RDBStorage)
    direct.grace_period = 1  # what the proxy's sweep uses, shortened for the test
    time.sleep(2.5)
    # What the proxy's sweep does for each study, for this study only: a sweep of every study
    # with a 1 s grace would fail other tests' running trials on the shared server.
    fail_stale(optuna.load_study(study_name=name, storage=_HeartbeatRelay(direct)))
    trials = optuna.load_study(study_name=name, storage=client).get_trials()
    direct.engine.dispose()
    assert [t.state.name for t in trials] == ["FAIL", "WAITING"]  # failed as stale, re-queued once


def test_a_bad_proxy_address_is_one_line_and_status_2_before_any_trial(tmp_path: Path) -> None:
    space = write_cli_space(tmp_path / "space.yaml")
    for address in (f"grpc://127.0.0.1:{free_port()}", "grpc://127.0.0.1:notaport"):
        proc = subprocess.run(octsearch_command("run", "--space", str(space), "--trials", "1",
                                                "--storage", address),
                              cwd=tmp_path, env=fake_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("octsearch: error: "), proc.stderr
        assert address in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_serve_storage_refuses_a_busy_port_and_a_proxy_url(proxy: str, tmp_path: Path) -> None:
    port = proxy.rsplit(":", 1)[1]
    for storage, expected in ((f"sqlite:///{tmp_path / 'other.db'}", f"cannot listen on 127.0.0.1:{port}"),
                              (proxy, "serve-storage needs the database URL")):
        proc = subprocess.run(octsearch_command("serve-storage", "--storage", storage, "--port", port),
                              cwd=tmp_path, env=fake_env(), capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], proc.stderr


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_workers_asking_at_once_never_share_an_enqueued_trial(proxy: str, database: tuple[str, str]) -> None:
    """SQLite has no SELECT ... FOR UPDATE: the proxy takes WAITING trials one at a time."""
    name = database[1]
    study = optuna.create_study(storage=open_storage(proxy, heartbeat=False), study_name=name)
    for i in range(16):
        study.enqueue_trial({"x": i})
    asked: list[int] = []
    start = threading.Barrier(8)

    def ask() -> None:
        mine = optuna.load_study(study_name=name, storage=open_storage(proxy, heartbeat=False))
        start.wait()
        for _ in range(2):
            asked.append(mine.ask().number)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(asked) == list(range(16))


def test_reads_that_arrive_together_share_one_database_read_that_sees_their_writes(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy's cache reads the study's unfinished trials from the database for every caller;
    callers that arrive while a read runs share the next one, which starts after they arrived."""
    backend = open_storage(sqlite_url, heartbeat=False)
    assert isinstance(backend, optuna.storages.RDBStorage)
    relay = _HeartbeatRelay(backend)
    study = optuna.create_study(storage=relay, study_name="coalesced")
    reads: list[float] = []
    slow = threading.Event()
    real = backend._get_trials

    def counted(*args: object, **kwargs: object) -> list[optuna.trial.FrozenTrial]:
        reads.append(time.monotonic())
        if slow.is_set():
            slow.clear()
            time.sleep(0.5)  # the first read is slow: the others arrive while it runs
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(backend, "_get_trials", counted)
    slow.set()
    first = threading.Thread(target=relay.get_all_trials, args=(study._study_id,))
    first.start()
    time.sleep(0.1)
    trial_id = backend.create_new_trial(study._study_id)  # written after the first read began
    seen: list[bool] = []

    def read() -> None:
        seen.append(trial_id in {t._trial_id for t in relay.get_all_trials(study._study_id)})

    threads = [threading.Thread(target=read) for _ in range(6)]
    for t in threads:
        t.start()
    for t in [first, *threads]:
        t.join(timeout=30)
    assert seen == [True] * 6  # each saw the trial written before its call
    assert len(reads) == 2  # the slow one, and one shared by the six
