"""Continuations of preempted trials and retries of stale ones run before anything else in the
queue, whatever their number, on every storage (issue: a re-queued trial waited behind the
enqueued ones and a search that reached N left it WAITING with its resume checkpoint on disk)."""

from __future__ import annotations

import dataclasses
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from search_testing import drop_study, fake_options, reachable_server, signal_when_written, storage_proxy

from search.contract import RESUME_FROM_ATTR, runs_first, runs_folder
from search.interrupts import stop_signals
from search.optuna_compat import no_experimental_warning
from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study.join import open_study
from search.worker.loop import ask_trial, run_one_trial, run_worker


def _queue(study: optuna.Study) -> None:
    """Trials 0-2 enqueued, 0 taken and failed; 3 a continuation of 0, 4 a stale trial's retry."""
    for lr in (1e-3, 2e-3, 3e-3):
        study.enqueue_trial({"train.lr_head": lr})
    first = study.ask()
    first.suggest_float("train.lr_head", 1e-4, 1e-2, log=True)
    study.tell(first, state=TrialState.FAIL)
    dist = {"train.lr_head": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    with no_experimental_warning():
        study.add_trial(optuna.create_trial(state=TrialState.WAITING, params={"train.lr_head": 1e-3},
                                            distributions=dist, user_attrs={RESUME_FROM_ATTR: "/ckpt/resume.pt"}))
        study.add_trial(optuna.create_trial(state=TrialState.WAITING, params={"train.lr_head": 2e-3},
                                            distributions=dist, system_attrs={"failed_trial": 1}))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mysql", marks=pytest.mark.mysql), "proxy"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each storage: a SQLite file, the PostgreSQL and MySQL servers, SQLite through the gRPC proxy."""
    if request.param in ("postgres", "mysql"):
        yield reachable_server(request.param)
        return
    sqlite = f"sqlite:///{tmp_path / 'study.db'}"
    if request.param == "proxy":
        with storage_proxy(sqlite, tmp_path) as proxied:
            yield proxied
        return
    yield sqlite


def test_a_continuation_and_a_stale_retry_are_asked_before_the_enqueued_trials(url: str) -> None:
    name = f"runs-first-{uuid.uuid4().hex[:8]}"
    study = optuna.create_study(study_name=name, storage=open_storage(url, heartbeat=False), direction="maximize")
    try:
        _queue(study)
        taken = [ask_trial(study).number for _ in range(4)]
        assert taken == [3, 4, 1, 2]  # then a new trial
        trials = study.get_trials(deepcopy=False)
        assert [runs_first(t) for t in trials] == [False, False, False, True, True]
        assert all(t.state == TrialState.RUNNING for t in trials[1:])
    finally:
        if not url.startswith(("sqlite", "grpc")):
            drop_study(url, name)


def test_a_search_that_reaches_n_resumes_its_preempted_trial_first(fake_space: dict[str, Any],
                                                                    tmp_path: Path) -> None:
    """The reported case: a worker SIGTERMed in the study's first trial, then run again with the
    same --trials 2 while two more enqueued trials wait. The continuation runs, from its checkpoint."""
    fake_space["enqueue"] = [{"name": f"seed{i}", "params": {"model.head.hidden": 64, "train.lr_head": lr}}
                             for i, lr in enumerate((1e-3, 2e-3, 3e-3))]
    space = space_from_dict(fake_space)
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study, _ = open_study(space, storage, "first")
    options = fake_options(tmp_path, 2, checkpoint_dir=tmp_path / "ckpt")
    options = dataclasses.replace(options, env={**options.env, "FAKE_FIT_EPOCH_S": "0.3"})
    signal_when_written(tmp_path / "runs" / runs_folder(study) / "trial_0000" / "started_1", signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), stop_signals():
        run_one_trial(study, space, storage, options)
    checkpoint = Path(study.get_trials()[0].user_attrs["preempted"]["checkpoint"])
    assert checkpoint.is_file()

    summary = run_worker(study, space, storage, options)
    trials = study.get_trials()
    assert summary.finished == 2 and summary.trials[0] == 3  # the continuation, asked first
    assert trials[3].state == TrialState.COMPLETE and trials[3].user_attrs["resumes_trial"] == 0
    assert trials[3].user_attrs["enqueued"] == "seed0"
    assert [t.state for t in trials[1:3]] == [TrialState.COMPLETE, TrialState.WAITING]  # seed1 ran, seed2 waits
    assert not checkpoint.exists()  # resumed and removed, not orphaned
