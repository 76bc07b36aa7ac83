"""A trial in its own process: its result file, and how each way of ending comes back.

The trial process runs the fake trainer (tests/search/fake_fit.py) on a real SQLite study.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
from fake_fit import CRASH, DIVERGE, HANG, RAISE
from search_testing import FAKE_SPACE, STUCK_REASON, fake_options, signal_when_written

from search.contract import PRUNE_REASON_ATTR, epoch_metrics
from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study.join import open_study
from search.trial.process import LOG_FILE, RESULT_FILE, Outcome, TrialRequest, TrialResult, run_trial_process


def start_trial(url: str, run_dir: Path, params: dict[str, Any]) -> tuple[optuna.Study, TrialRequest]:
    """A RUNNING trial of a new study with ``params``, and the request that runs it."""
    space = space_from_dict(FAKE_SPACE)
    study, _ = open_study(space, open_storage(url, heartbeat=False), "s")
    study.enqueue_trial(params)
    trial = study.ask()
    cfg = space.trainer_config(space.suggest(trial))
    request = TrialRequest(study_name="s", trial_id=trial._trial_id,  # as the worker hands it over
                           trial_number=trial.number, run_dir=str(run_dir), config=cfg.to_dict(),
                           fit_target="fake_fit:fit")
    return study, request


def run(url: str, tmp_path: Path, hidden: int, lr_head: float) -> tuple[optuna.Study, TrialResult]:
    study, request = start_trial(url, tmp_path / "run",
                                 {"model.head.hidden": hidden, "train.lr_head": lr_head})
    return study, run_trial_process(request, url, env=fake_options(tmp_path, 1).env)


def test_a_complete_trial_returns_its_best_epoch(sqlite_url: str, tmp_path: Path) -> None:
    study, result = run(sqlite_url, tmp_path, 64, 1e-3)
    assert result == TrialResult(Outcome.COMPLETE, value=pytest.approx(0.9), best_epoch=4)
    assert json.loads((tmp_path / "run" / RESULT_FILE).read_text())["state"] == "complete"
    assert "fake epoch 5 bal_acc 0.90" in (tmp_path / "run" / LOG_FILE).read_text()
    assert sorted(study.get_trials()[0].intermediate_values) == [0, 1, 2, 3, 4, 5]
    assert study.get_trials()[0].state == optuna.trial.TrialState.RUNNING  # the parent tells


def test_a_collapsed_trial_is_pruned_with_the_reason_in_its_result(sqlite_url: str,
                                                                   tmp_path: Path) -> None:
    study, result = run(sqlite_url, tmp_path, 0, 1e-3)
    reason = STUCK_REASON
    assert result == TrialResult(Outcome.PRUNED, reason=reason)
    (trial,) = study.get_trials()
    assert PRUNE_REASON_ATTR not in trial.user_attrs  # the worker records it when it tells
    assert epoch_metrics(trial, 2) is not None and epoch_metrics(trial, 3) is None


@pytest.mark.parametrize(("lr_head", "expected"), [
    (DIVERGE, TrialResult(Outcome.PRUNED, reason="diverged: training diverged: loss is nan in "
                                                 "epoch 1")),
    (RAISE, TrialResult(Outcome.FAILED, reason="RuntimeError: boom")),
])
def test_errors_of_the_trainer(lr_head: float, expected: TrialResult, sqlite_url: str,
                               tmp_path: Path) -> None:
    assert run(sqlite_url, tmp_path, 64, lr_head)[1] == expected


def test_a_process_that_dies_without_a_result_fails_with_its_last_lines(sqlite_url: str,
                                                                        tmp_path: Path) -> None:
    _, result = run(sqlite_url, tmp_path, 64, CRASH)
    assert result.state is Outcome.FAILED
    assert result.reason == ("trial process exited with status 3 without a result: "
                             "fake_fit: about to crash")
    assert result.output_tail is not None and "fake epoch 0" in result.output_tail


def test_an_interrupted_parent_stops_the_whole_trial_process(sqlite_url: str,
                                                             tmp_path: Path) -> None:
    study, request = start_trial(sqlite_url, tmp_path / "run",
                                 {"model.head.hidden": 64, "train.lr_head": HANG})
    pid_file = tmp_path / "run" / "pid"
    signal_when_written(pid_file, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        run_trial_process(request, sqlite_url, env=fake_options(tmp_path, 1).env)
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


def test_result_file_round_trip_and_unreadable_files(tmp_path: Path) -> None:
    path = tmp_path / RESULT_FILE
    result = TrialResult(Outcome.PRUNED, reason="collapsed")
    result.write(path)
    assert json.loads(path.read_text())["state"] == "pruned"  # the file format is strings
    assert TrialResult.read(path) == result
    for text in ("{", '{"state": "exploded"}', '{"value": 1.0}'):
        path.write_text(text)
        assert TrialResult.read(path) is None
    assert TrialResult.read(tmp_path / "missing.json") is None
