"""Storage URLs, SQLite settings, and heartbeats on every storage kind."""

from __future__ import annotations

import io
import re
import socket
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from search_testing import reachable_server

from search.contract import (
    ENQUEUED_ATTR,
    RESUME_FROM_ATTR,
    RESUMES_TRIAL_ATTR,
    stored_epochs,
    write_epoch,
    write_preempted,
)
from search.errors import StorageError
from search.space.search_space import space_from_dict
from search.storage import sql as storage_mod
from search.storage.sql import fail_stale, heartbeat, open_storage
from search.storage.urls import check_shared, normalize_url
from search.study.join import open_study


@pytest.mark.parametrize(
    ("url", "normalized"),
    [
        ("sqlite:///octsearch.db", "sqlite:///octsearch.db"),
        ("postgresql://u:pw@h:5432/db", "postgresql+psycopg://u:pw@h:5432/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("mysql://root@h:3306/db", "mysql+pymysql://root@h:3306/db"),
    ],
)
def test_urls_get_the_installed_drivers(url: str, normalized: str) -> None:
    assert normalize_url(url) == normalized


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://localhost:6379", "unsupported storage 'redis' in 'redis://localhost:6379'"),
        ("postgresql+psycopg2://u:secret@h/db", "unsupported storage 'postgresql+psycopg2' in "
                                                "'postgresql+psycopg2://u:***@h/db'"),
        ("not a url", "cannot parse storage URL 'not a url'"),
        ("bad url://u:secret@h/db", "cannot parse storage URL 'bad url://u:***@h/db'"),
    ],
)
def test_bad_urls_are_named(url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message.replace("+", r"\+").replace("*", r"\*")):
        normalize_url(url)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:",
                                 "sqlite:///file:x?mode=memory&uri=true"])
def test_in_memory_sqlite_is_refused_as_trial_processes_cannot_see_it(url: str) -> None:
    with pytest.raises(StorageError, match="is an in-memory SQLite database, which trial "
                                           "processes cannot see: use sqlite:///FILE"):
        open_storage(url)
    assert check_shared("sqlite:///study.db") == "sqlite:///study.db"


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(sqlite_url: str) -> None:
    storage = open_storage(sqlite_url)
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert storage.engine_kwargs["connect_args"]["timeout"] == storage_mod.SQLITE_BUSY_TIMEOUT_S
    assert storage.get_heartbeat_interval() == storage_mod.HEARTBEAT_INTERVAL_S
    assert open_storage(sqlite_url, heartbeat=False).get_heartbeat_interval() is None


def test_sqlite_in_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="folder .*/missing' does not exist"):
        open_storage(f"sqlite:///{tmp_path / 'missing' / 'study.db'}")


def test_unreachable_server_is_a_storage_error_without_the_password() -> None:
    with pytest.raises(StorageError) as info:
        open_storage("postgresql+psycopg://u:secret@127.0.0.1:1/db")
    assert "cannot open storage 'postgresql+psycopg://u:***@127.0.0.1:1/db'" in str(info.value)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("kind", [pytest.param("postgres", marks=pytest.mark.postgres),
                                  pytest.param("mysql", marks=pytest.mark.mysql)])
def test_server_storages_pool_and_pre_ping(kind: str) -> None:
    storage = open_storage(reachable_server(kind), heartbeat=False)
    assert storage.engine_kwargs["pool_pre_ping"] is True
    pool = storage.engine.pool
    assert isinstance(pool, sqlalchemy.pool.QueuePool)
    assert pool.size() == storage_mod.POOL["pool_size"]


def test_heartbeat_keeps_a_trial_alive_and_a_stale_one_is_retried(
    storage_url: str, study_name: str, fake_space: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage_mod, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(storage_mod, "GRACE_PERIOD_S", 2)
    fake_space["enqueue"] = [{"name": "seed", "params": {"model.head.hidden": 64,
                                                         "train.lr_head": 1e-3}}]
    space = space_from_dict(fake_space)
    storage = open_storage(storage_url)
    study, _ = open_study(space, storage, study_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = study.ask()
        space.suggest(trial)
        write_epoch(trial, 0, {"val/balanced_accuracy": 0.5})
        trial.set_user_attr("host", "worker-7")
        with heartbeat(storage, trial._trial_id):
            time.sleep(2.5)
            fail_stale(study)  # beating: not stale
            assert study.get_trials()[0].state == TrialState.RUNNING
        time.sleep(3.0)  # no beat for longer than the grace period
        fail_stale(study)
    stale, retry = study.get_trials()
    assert stale.state == TrialState.FAIL
    assert stale.user_attrs["fail_reason"] == (
        "failed as stale: no heartbeat for 2 s (its worker on worker-7 was killed, its host went down, "
        "or it lost the database); re-queued with the same parameters")
    assert retry.state == TrialState.WAITING
    assert retry.params == stale.params == {"model.head.hidden": 64, "train.lr_head": 1e-3}
    assert retry.user_attrs == {ENQUEUED_ATTR: "seed"}
    assert stored_epochs(stale) != [] and stored_epochs(retry) == []  # not the dead run's epochs
    assert retry.system_attrs["failed_trial"] == 0


def test_heartbeat_survives_storage_errors_and_reports_the_outage_once(
    storage_url: str, study_name: str, fake_space: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """Optuna raises StorageInternalError (not an SQLAlchemyError) when the database is gone:
    the beats fail for a while, the thread keeps going and beats again once it is back."""
    monkeypatch.setattr(storage_mod, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(storage_mod, "GRACE_PERIOD_S", 2)
    storage = open_storage(storage_url)
    study, _ = open_study(space_from_dict(fake_space), storage, study_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = study.ask()
    real_beat = storage.record_heartbeat
    calls: list[float] = []

    def failing_then_real(trial_id: int) -> None:
        calls.append(time.monotonic())
        if len(calls) <= 3:  # the first three beats find the database unreachable
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.")
        real_beat(trial_id)

    monkeypatch.setattr(storage, "record_heartbeat", failing_then_real)
    with heartbeat(storage, trial._trial_id):
        deadline = time.monotonic() + 30
        while len(calls) < 5 and time.monotonic() < deadline:  # 3 failed beats, 2 recorded
            time.sleep(0.1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        assert study.get_trials()[0].state == TrialState.RUNNING  # its heartbeat is fresh
    assert len(calls) >= 5
    lost, back = capsys.readouterr().err.splitlines()  # one line each, not one per beat
    assert lost == (f"octsearch: heartbeat of trial id {trial._trial_id} failed, retrying every "
                    "beat: An exception is raised during the commit.")
    assert re.fullmatch(rf"octsearch: heartbeat of trial id {trial._trial_id} recorded again "
                        r"after [3-9] s", back)


def test_heartbeat_outage_line_quotes_the_database_not_optunas_wrapper(
    tmp_path: Path, fake_space: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A database that cannot be reached makes Optuna raise StorageInternalError("... typically
    happens due to invalid data in the commit ...") from SQLAlchemy's OperationalError: the line
    quotes the driver's error. Here the folder of the SQLite file is moved away (its pooled
    connections closed), so SQLite cannot open it, and moved back."""
    monkeypatch.setattr(storage_mod, "HEARTBEAT_INTERVAL_S", 1)
    folder = tmp_path / "db"
    folder.mkdir()
    storage = open_storage(f"sqlite:///{folder / 'study.db'}")
    study, _ = open_study(space_from_dict(fake_space), storage, "outage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trial = study.ask()
    folder.rename(tmp_path / "away")
    storage.engine.dispose()
    out = io.StringIO()

    def lines(n: int) -> list[str]:
        deadline = time.monotonic() + 30
        while len(out.getvalue().splitlines()) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        return out.getvalue().splitlines()

    with heartbeat(storage, trial._trial_id, out=out):
        assert lines(1) == [f"octsearch: heartbeat of trial id {trial._trial_id} failed, retrying "
                            "every beat: unable to open database file"]
        (tmp_path / "away").rename(folder)
        assert re.fullmatch(rf"octsearch: heartbeat of trial id {trial._trial_id} recorded again "
                            r"after \d+ s", lines(2)[1])


def test_a_mysql_server_that_accepts_and_never_answers_is_one_error_not_a_hang(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """pymysql's connect_timeout bounds the TCP connect only: the handshake read waited forever
    (``octsearch run`` killed after 400 s). A listener on loopback that accepts and stays silent."""
    monkeypatch.setattr(storage_mod, "MYSQL_IO_TIMEOUT_S", 2, raising=False)  # raising: the code before had none
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        accepted: list[socket.socket] = []
        threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
        errors: list[BaseException] = []

        def open_it() -> None:
            try:
                open_storage(f"mysql+pymysql://root@127.0.0.1:{port}/test", heartbeat=False)
            except BaseException as err:  # noqa: BLE001 - what it raised is checked below
                errors.append(err)

        opener = threading.Thread(target=open_it, daemon=True)
        start = time.monotonic()
        opener.start()
        opener.join(timeout=30)
        assert not opener.is_alive(), "open_storage still waits on a silent MySQL server after 30 s"
        assert time.monotonic() - start < 20
        for conn in accepted:
            conn.close()
    assert len(errors) == 1 and isinstance(errors[0], StorageError), errors
    assert str(errors[0]).startswith(f"cannot open storage 'mysql+pymysql://root@127.0.0.1:{port}/test'")


def test_a_stale_continuation_stopped_again_resumes_from_its_new_checkpoint_and_drops_the_old(
    tmp_path: Path,
) -> None:
    """Found by the chaos soak: a continuation that stopped with a newer checkpoint, whose
    worker was then killed, left the checkpoint it had resumed from on disk for good."""
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=False)
    study = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    old, new = tmp_path / "trial_0000" / "resume.pt", tmp_path / "trial_0001" / "resume.pt"
    for path in (old, new):
        path.parent.mkdir()
        path.write_bytes(b"checkpoint")
    x = {"x": optuna.distributions.FloatDistribution(0, 1)}
    first = study.ask(x)
    write_preempted(first, {"reason": "SIGTERM", "epochs_done": 2, "checkpoint": str(old)})
    study.tell(first, state=TrialState.FAIL)
    resumed = study.ask(x)
    resumed.set_user_attr(RESUMES_TRIAL_ATTR, first.number)
    resumed.set_user_attr(RESUME_FROM_ATTR, str(old))
    write_preempted(resumed, {"reason": "SIGTERM", "epochs_done": 4, "checkpoint": str(new)})
    storage_mod._retry_stale(study, storage.get_trial(resumed._trial_id))  # as the stale sweep does
    (waiting,) = study.get_trials(states=(TrialState.WAITING,))
    assert waiting.user_attrs[RESUME_FROM_ATTR] == str(new) and new.exists()
    assert not old.exists()  # nothing resumes from it any more


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_as_stale(
    storage_url: str, study_name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the chaos soak: a worker SIGKILLed between ``ask`` and its first heartbeat left
    a RUNNING trial that Optuna's stale check (trials with a heartbeat only) never saw, and
    every worker waited for it for ever."""
    monkeypatch.setattr(storage_mod, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(storage_mod, "GRACE_PERIOD_S", 2)
    study = optuna.create_study(storage=open_storage(storage_url), study_name=study_name,
                                direction="maximize")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})  # and no heartbeat, ever
        fail_stale(study)
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]  # not yet: too young
        time.sleep(2.5)
        fail_stale(study)
    orphan, retry = study.get_trials()
    assert orphan.state == TrialState.FAIL and retry.state == TrialState.WAITING
    assert orphan.user_attrs["fail_reason"].startswith("failed as stale: no heartbeat for 2 s")
