"""The counting rule after ``ask`` (search/study/counting.py): workers asking at the same instant never
end a study over N finished trials, and a trial put back is the next one asked."""

from __future__ import annotations

import io
import threading
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from search_testing import fake_options, run_threads

from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study.counting import FINISHED, keep_or_put_back
from search.study.join import open_study
from search.worker.loop import WorkerSummary, ask_trial, run_worker


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))


@pytest.fixture
def study(storage_url: str, study_name: str) -> optuna.Study:
    return optuna.create_study(study_name=study_name, storage=open_storage(storage_url, heartbeat=False),
                               direction="maximize")


def test_a_trial_over_the_count_goes_back_to_the_queue_and_is_asked_next(study: optuna.Study) -> None:
    study.tell(study.ask(), 0.5)
    other = ask_trial(study)  # another worker's running trial
    mine = ask_trial(study)  # asked at the same instant as ``other``, with room for one of them
    assert keep_or_put_back(study, mine, n_trials=2) == (1, 2)
    assert study._storage.get_trial(mine._trial_id).state == TrialState.WAITING
    assert keep_or_put_back(study, other, n_trials=2) is None  # the one left fits
    again = ask_trial(study)
    assert again._trial_id == mine._trial_id  # the queue comes first
    assert 0 <= again.suggest_float("x", 0, 1) <= 1  # sampled afresh: nothing was suggested before
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.RUNNING,
                                                     TrialState.RUNNING]


def test_an_enqueued_trial_put_back_keeps_its_parameters(study: optuna.Study) -> None:
    study.enqueue_trial({"x": 0.25}, user_attrs={"enqueued": "seed"})
    ask_trial(study).suggest_float("x", 0, 1)  # another worker took the enqueued trial...
    study.enqueue_trial({"x": 0.75}, user_attrs={"enqueued": "second"})
    mine = ask_trial(study)  # ...and this one the next, over n_trials=1
    assert keep_or_put_back(study, mine, n_trials=1) == (0, 2)
    again = ask_trial(study)
    assert again._trial_id == mine._trial_id
    assert again.suggest_float("x", 0, 1) == 0.75 and again.user_attrs["enqueued"] == "second"


def test_eight_workers_asking_at_once_never_keep_more_trials_than_the_room_left(
    storage_url: str, study: optuna.Study
) -> None:
    """The worst case of the counting rule: eight workers each with their own connection ask at
    the same instant, every round, then count again. However their calls interleave in the
    database, the trials they keep fit the room left, and no WAITING trial (put back, then
    asked again by another worker in the same round) is kept by two."""
    n_trials, workers, rounds = 20, 8, 6
    barrier = threading.Barrier(workers)
    kept: list[list[int]] = [[] for _ in range(rounds)]
    asked: list[list[int]] = [[] for _ in range(rounds)]
    room = [0] * rounds
    lock = threading.Lock()

    def one_worker() -> None:
        mine = load(storage_url, study.study_name)
        for r in range(rounds):
            if barrier.wait(timeout=60) == 0:
                room[r] = n_trials - len(mine.get_trials(states=FINISHED))
            barrier.wait(timeout=60)
            trial = ask_trial(mine)
            keep = keep_or_put_back(mine, trial, n_trials) is None
            with lock:
                asked[r].append(trial._trial_id)
                if keep:
                    kept[r].append(trial._trial_id)
            if barrier.wait(timeout=60) == 0:  # every worker has decided: the kept trials end
                for trial_id in kept[r]:
                    mine._storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])

    assert not run_threads(one_worker, workers, timeout=300)
    assert [len(k) for k in kept[:2]] == [8, 8]  # room for all: every trial kept
    assert all(len(kept[r]) <= room[r] for r in range(rounds)), (kept, room)
    assert all(len(set(k)) == len(k) for k in kept), kept  # no trial kept by two workers
    assert all(len(a) == workers for a in asked)
    trials = load(storage_url, study.study_name).get_trials()
    finished = sum(t.state in FINISHED for t in trials)
    assert finished == sum(map(len, kept)) <= n_trials
    assert {t.state for t in trials} <= {*FINISHED, TrialState.WAITING}


def race_for_the_last_place(fake_space: dict[str, Any], url: str, tmp_path: Path,
                           monkeypatch: pytest.MonkeyPatch, other_ends: dict[str, Any],
                           out: io.StringIO | None = None) -> tuple[optuna.Study, WorkerSummary]:
    """A one-trial study whose worker loses the race for its only place: another worker's
    trial is asked just before its own, and ends 1 s later (``other_ends``: ``study.tell``'s
    keywords). The worker's summary when it stops."""
    space = space_from_dict(fake_space)
    storage = open_storage(url)
    study, _ = open_study(space, storage, "race", seed=0)
    others: list[optuna.Trial] = []

    def racing_ask(study: optuna.Study) -> optuna.Trial:
        if not others:
            others.append(ask_trial(study))
            threading.Timer(1.0, study.tell, (others[0],), other_ends).start()
        return ask_trial(study)

    monkeypatch.setattr("search.worker.loop.ask_trial", racing_ask)
    return study, run_worker(study, space, storage, fake_options(tmp_path, 1), out=out)


def test_a_worker_that_put_its_trial_back_runs_it_when_the_other_fails(
    fake_space: dict[str, Any], sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other trial fails: this worker takes its own trial from the queue again and runs it."""
    study, summary = race_for_the_last_place(fake_space, sqlite_url, tmp_path, monkeypatch,
                                             {"state": TrialState.FAIL})
    trials = study.get_trials()
    assert len(trials) == 2 and trials[0].state == TrialState.FAIL
    assert trials[1].state in FINISHED and summary.trials == [1] and summary.finished == 1
    assert len(trials[1].intermediate_values) >= 3  # it ran: epochs reported


def test_a_put_back_is_one_line_of_progress(
    fake_space: dict[str, Any], sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The other trial completes: the study is done, and the put-back trial stays WAITING."""
    out = io.StringIO()
    study, summary = race_for_the_last_place(fake_space, sqlite_url, tmp_path, monkeypatch,
                                             {"values": 0.5}, out)
    lines = [line for line in out.getvalue().splitlines() if "put back" in line]
    assert lines == ["octsearch: trial 1 put back in the queue: 0 finished and 2 running with it, "
                     "over 1 (another worker asked at the same time)"]
    assert summary.trials == [] and summary.finished == 1
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE, TrialState.WAITING]
