"""search/storage/retry.py: which errors are an outage, retry with backoff, one notice, the limit."""

from __future__ import annotations

import io
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from search.storage.retry import DatabaseUnreachableError, Outage, RetryingStorage, is_outage, single_attempt
from search.storage.sql import open_storage


def _internal_error(cause: Exception) -> optuna.exceptions.StorageInternalError:
    """What Optuna 5 raises for any SQLAlchemy error inside its sessions."""
    try:
        try:
            raise cause
        except Exception as err:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the "
                                                         "commit.") from err
    except optuna.exceptions.StorageInternalError as wrapped:
        return wrapped


REFUSED = sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
BAD_DATA = sqlalchemy.exc.DataError("INSERT", {}, ValueError("value too long"))


@pytest.mark.parametrize(("err", "outage"), [
    (_internal_error(REFUSED), True),
    (REFUSED, True),
    (sqlalchemy.exc.InterfaceError("SELECT 1", {}, OSError("closed")), True),
    (_internal_error(BAD_DATA), False),  # the same wrapper, a user's data: never retried
    (sqlalchemy.exc.IntegrityError("INSERT", {}, ValueError("duplicate")), False),
    (optuna.exceptions.UpdateFinishedTrialError("finished"), False),
    (KeyError("Record does not exist."), False),
])
def test_is_outage(err: Exception, outage: bool) -> None:
    assert is_outage(err) is outage


class Flaky:
    """Fails ``failures`` times with ``err``, then returns "ok"."""

    def __init__(self, failures: int, err: Exception) -> None:
        self.failures, self.err, self.calls = failures, err, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.err
        return "ok"


def test_injected_storage_internal_error_is_retried_with_one_notice() -> None:
    out = io.StringIO()
    flaky = Flaky(2, _internal_error(REFUSED))
    assert Outage(30, out).call(flaky, "get_trial") == "ok"
    assert flaky.calls == 3
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("octsearch: database unreachable (get_trial: ")
    assert "refused" in lines[0] and "retrying for up to 30 s" in lines[0]
    assert lines[1].startswith("octsearch: database reachable again after ")


def test_a_user_error_is_raised_at_once() -> None:
    flaky = Flaky(1, _internal_error(BAD_DATA))
    with pytest.raises(optuna.exceptions.StorageInternalError):
        Outage(30, io.StringIO()).call(flaky, "set_trial_user_attr")
    assert flaky.calls == 1


def test_gives_up_after_the_limit() -> None:
    flaky = Flaky(10**6, _internal_error(REFUSED))
    with pytest.raises(DatabaseUnreachableError, match=r"unreachable for more than 1 s \(tell: "):
        Outage(1, io.StringIO()).call(flaky, "tell")
    assert 2 <= flaky.calls <= 4  # 0.5 s, then what is left of the second


def test_single_attempt_raises_the_outage_to_the_caller() -> None:
    flaky = Flaky(1, _internal_error(REFUSED))
    out = io.StringIO()
    with single_attempt(), pytest.raises(optuna.exceptions.StorageInternalError):
        Outage(30, out).call(flaky, "report")
    assert flaky.calls == 1
    assert "; epoch reports queued, training goes on; retrying for up to 30 s" in out.getvalue()


def test_open_storage_with_an_outage_limit_retries_storage_calls(tmp_path: Path) -> None:
    """A real storage whose session commit fails twice: Optuna raises StorageInternalError."""
    out = io.StringIO()
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=False, outage_s=30,
                           out=out)
    assert isinstance(storage, RetryingStorage)
    study = optuna.create_study(storage=storage, study_name="s")
    trial_id = study.ask()._trial_id
    real = storage.scoped_session
    broken = {"left": 2}

    def refuse() -> None:
        raise REFUSED

    def session() -> object:
        opened = real()
        opened.__dict__.pop("commit", None)  # the scoped session is reused: undo the last
        if broken["left"]:
            broken["left"] -= 1
            opened.commit = refuse
        return opened

    storage.scoped_session = session  # type: ignore[assignment]
    try:
        storage.set_trial_user_attr(trial_id, "k", 1)
    finally:
        storage.scoped_session = real
    assert broken["left"] == 0
    assert storage.get_trial(trial_id).user_attrs == {"k": 1}
    assert "database unreachable (set_trial_user_attr: " in out.getvalue()
    assert not isinstance(open_storage(f"sqlite:///{tmp_path / 'study.db'}"), RetryingStorage)
