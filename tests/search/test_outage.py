"""A database outage mid-study, on a private PostgreSQL the test stops and starts itself.

The worker (``octsearch run``, the console script) and its running trial ride out a server
stopped for 12 s: epoch reports are queued and delivered, the study ends with exactly N
finished trials. Past the outage limit the finished trial's result is kept on disk, and the
next ``octsearch run`` delivers it.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState
from private_postgres import PrivatePostgres, wait_for
from search_testing import fake_env, octsearch_command, storage_proxy, write_cli_space

from search.trial.epoch_queue import QUEUE_FILE
from search.worker.pending import MARKER_FILE

pytestmark = pytest.mark.private_postgres

LEARNS = {"model.head.hidden": 64, "train.lr_head": 1e-3}
COLLAPSES = {"model.head.hidden": 0, "train.lr_head": 1e-3}


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    server = PrivatePostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


def _space(tmp_path: Path, epochs: int, *enqueued: dict[str, float]) -> Path:
    path = write_cli_space(tmp_path / "outage.yaml",
                           enqueue=[{"name": f"t{i}", "params": p} for i, p in enumerate(enqueued)])
    text = path.read_text().replace("epochs: 6", f"epochs: {epochs}")
    assert f"epochs: {epochs}" in text
    path.write_text(text)
    return path


def _reported_epochs(url: str, number: int) -> int:
    """Epochs of trial ``number`` in the database (0 while unreachable or not started)."""
    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            return int(conn.execute(sqlalchemy.text(
                "SELECT count(*) FROM trial_intermediate_values v JOIN trials t "
                "ON t.trial_id = v.trial_id WHERE t.number = :n"), {"n": number}).scalar() or 0)
    except sqlalchemy.exc.SQLAlchemyError:
        return 0
    finally:
        engine.dispose()


def _worker(space: Path, url: str, tmp_path: Path, trials: int, outage_s: float,
            epoch_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        octsearch_command("run", "--space", str(space), "--trials", str(trials), "--storage", url,
                          "--runs-dir", str(tmp_path / "runs"), "--db-outage-s", str(outage_s)),
        cwd=tmp_path, env=fake_env(FAKE_FIT_EPOCH_S=str(epoch_s)), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="outage", storage=url).get_trials()


def test_worker_and_trial_ride_out_a_server_restart(postgres: PrivatePostgres,
                                                    tmp_path: Path) -> None:
    space = _space(tmp_path, 8, LEARNS, COLLAPSES)
    worker = _worker(space, postgres.url, tmp_path, trials=2, outage_s=60, epoch_s=2.0)
    try:
        wait_for(lambda: _reported_epochs(postgres.url, 0) >= 2, 60, "trial 0's epoch 1")
        postgres.stop()
        time.sleep(12)  # epochs 2-7 of trial 0 end meanwhile: queued in the trial process
        postgres.start()
        out, err = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 0, err
    trials = _trials(postgres.url)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert sorted(trials[0].intermediate_values) == list(range(8))  # none lost, none doubled
    assert trials[0].value == pytest.approx(0.9)
    assert sorted(trials[1].intermediate_values) == [0, 1, 2]
    assert "database unreachable" in err and "database reachable again" in err
    assert "Traceback" not in err


def test_a_worker_through_the_proxy_rides_out_a_server_restart(postgres: PrivatePostgres,
                                                               tmp_path: Path) -> None:
    """Found by the chaos soak: the proxy made each call once, so a database restart reached
    every worker behind it as gRPC's UNKNOWN error and ended it with a traceback. The proxy now
    rides out the outage itself (its clients' calls wait) and says so in its log."""
    space = _space(tmp_path, 6, LEARNS)
    with storage_proxy(postgres.url, tmp_path) as url:
        worker = _worker(space, url, tmp_path, trials=1, outage_s=60, epoch_s=1.0)
        try:
            wait_for(lambda: _reported_epochs(postgres.url, 0) >= 2, 60, "trial 0's epoch 1")
            postgres.stop()
            time.sleep(8)
            postgres.start()
            out, err = worker.communicate(timeout=120)
        finally:
            if worker.poll() is None:
                worker.kill()
    assert worker.returncode == 0, err
    (trial,) = _trials(postgres.url)
    assert trial.state == TrialState.COMPLETE and sorted(trial.intermediate_values) == list(range(6))
    assert "Traceback" not in err
    log = (tmp_path / "proxy.log").read_text()
    assert "database unreachable" in log and "database reachable again" in log, log


def test_a_result_past_the_outage_limit_is_kept_and_delivered_later(
        postgres: PrivatePostgres, tmp_path: Path) -> None:
    space = _space(tmp_path, 4, LEARNS)
    worker = _worker(space, postgres.url, tmp_path, trials=1, outage_s=3, epoch_s=1.0)
    try:
        wait_for(lambda: _reported_epochs(postgres.url, 0) >= 1, 60, "trial 0's epoch 0")
        postgres.stop()
        _, err = worker.communicate(timeout=90)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("octsearch: error: the database was unreachable for more than 3 s")
    assert "the result of trial 0 is kept in" in last and "Traceback" not in err
    (run_dir,) = (tmp_path / "runs").glob("outage-*/trial_0000")
    assert (run_dir / MARKER_FILE).exists() and (run_dir / QUEUE_FILE).exists()

    postgres.start()
    again = _worker(space, postgres.url, tmp_path, trials=1, outage_s=3, epoch_s=1.0)
    _, err = again.communicate(timeout=60)
    assert again.returncode == 0, err
    assert "delivered the kept result of trial 0 (complete)" in err
    (trial,) = _trials(postgres.url)  # delivered, not run again
    assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(0.8)
    assert sorted(trial.intermediate_values) == [0, 1, 2, 3]
    assert not (run_dir / MARKER_FILE).exists() and not (run_dir / QUEUE_FILE).exists()
