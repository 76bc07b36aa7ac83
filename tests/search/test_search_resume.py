"""Preempted trials with the fake trainer, on every storage: recorded, re-queued with their
epochs, resumed by the next worker, counted once (see search/worker/requeue.py; the real trainer and
``octsearch run`` end to end are in test_preemption.py)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from fake_fit import CRASH
from optuna.trial import TrialState
from search_testing import (
    fake_env,
    fake_options,
    octsearch_command,
    signal_when_written,
    trial_pids,
    write_cli_space,
)

from search.contract import runs_folder, stored_epochs
from search.interrupts import stop_signals
from search.review import format_trials
from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study.join import open_study
from search.worker.loop import run_one_trial, run_worker


def test_a_preempted_trial_is_requeued_and_resumed_once(fake_space: dict[str, Any],
                                                        storage_url: str, study_name: str,
                                                        tmp_path: Path) -> None:
    fake_space["enqueue"] = [{"name": "learns",
                              "params": {"model.head.hidden": 64, "train.lr_head": 1e-3}}]
    space = space_from_dict(fake_space)
    storage = open_storage(storage_url)
    study, _ = open_study(space, storage, study_name)
    options = fake_options(tmp_path, 1, checkpoint_dir=tmp_path / "ckpt")
    options = dataclasses.replace(options, env={**options.env, "FAKE_FIT_EPOCH_S": "0.5"})

    # SIGTERM during epoch 2: the trial process stops at the start of epoch 3.
    run_dir = tmp_path / "runs" / runs_folder(study) / "trial_0000"
    signal_when_written(run_dir / "started_2", signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), stop_signals():
        run_one_trial(study, space, storage, options)
    first, queued = study.get_trials()
    assert (first.state, queued.state) == (TrialState.FAIL, TrialState.WAITING)
    checkpoint = tmp_path / "ckpt" / runs_folder(study) / "trial_0000" / "resume.pt"
    assert first.user_attrs["preempted"] == {
        "reason": f"preempted by SIGTERM at epoch 3, micro-batch 0; resume checkpoint {checkpoint}",
        "epochs_done": 3, "checkpoint": str(checkpoint)}
    assert queued.params == first.params and queued.user_attrs["enqueued"] == "learns"
    assert queued.user_attrs["resume_from"] == str(checkpoint)
    assert queued.intermediate_values == first.intermediate_values == {0: 0.5, 1: 0.6, 2: 0.7}
    assert [e for e, _ in stored_epochs(queued)] == [0, 1, 2]
    assert not any(k.startswith("epoch_") for k in queued.user_attrs)  # not where the dashboard shows them

    summary = run_worker(study, space, storage, options)
    assert summary.finished == 1 and summary.trials == [1]
    first, resumed = study.get_trials()
    assert resumed.state == TrialState.COMPLETE
    assert resumed.intermediate_values == {e: pytest.approx(min(0.9, 0.5 + 0.1 * e))
                                           for e in range(6)}
    assert not (run_dir.parent / "trial_0001" / "started_2").exists()  # it started at epoch 3
    assert not checkpoint.exists()
    assert "preempted by SIGTERM at epoch 3" in format_trials(study, keys=["number", "reason"])
    assert "preempted" in format_trials(study).splitlines()[3]  # the table's "end" column


@pytest.mark.parametrize("sequence", [("SIGINT", "SIGINT"), ("SIGTERM", "SIGTERM", "SIGINT")])
def test_more_stop_signals_during_the_stop_still_queue_the_continuation(
        sequence: tuple[str, ...], tmp_path: Path) -> None:
    """The reported case: Ctrl-C twice (or TERM, TERM, INT) ended `octsearch run` in the middle of
    its trial process's stop, with the trial left RUNNING and its resume checkpoint orphaned. The
    signals after the first now arrive during the stop grace and change nothing."""
    space = write_cli_space(tmp_path / "space.yaml", enqueue=[
        {"name": "learns", "params": {"model.head.hidden": 64, "train.lr_head": 1e-3}}])
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cmd = octsearch_command("run", "--space", str(space), "--trials", "1", "--storage", url,
                            "--runs-dir", str(tmp_path / "runs"))
    worker = subprocess.Popen(cmd, cwd=tmp_path, env=fake_env(FAKE_FIT_EPOCH_S="1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob("runs/*/trial_0000/started_1")):  # mid-trial
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        for sig in sequence:  # the first stops the trial process at its next epoch (< 1 s)
            worker.send_signal(signal.Signals[sig])
            time.sleep(0.2)
        _, err = worker.communicate(timeout=120)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert worker.returncode == 128 + signal.Signals[sequence[0]], err[-3000:]
    study = optuna.load_study(study_name="space", storage=open_storage(url, heartbeat=False))
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.WAITING]  # none RUNNING
    stopped, queued = study.get_trials()
    for sig in sequence[1:]:
        assert f"octsearch: {sig} again: already stopping" in err
    checkpoint = Path(queued.user_attrs["resume_from"])
    assert checkpoint.is_file() and queued.user_attrs["resumes_trial"] == 0

    again = subprocess.run(cmd, cwd=tmp_path, env=fake_env(), capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = study.get_trials()[1]
    assert resumed.state == TrialState.COMPLETE
    assert sorted(resumed.intermediate_values) == list(range(6))
    assert not checkpoint.exists()


def test_a_trial_process_stopped_by_a_scheduler_resumes_and_is_no_failure(
        fake_space: dict[str, Any], sqlite_url: str, tmp_path: Path) -> None:
    """SIGTERM or SIGINT sent to the trial process itself (a scheduler, a chaos test): it stops
    with a resume checkpoint, its configuration is re-queued and resumed by the same worker, and
    the stop does not count towards --max-failures (here 1: a counted failure ends the worker)."""
    fake_space["enqueue"] = [{"name": "learns", "params": {"model.head.hidden": 64, "train.lr_head": 1e-3}}]
    space = space_from_dict(fake_space)
    storage = open_storage(sqlite_url)
    study, _ = open_study(space, storage, "scheduler")
    options = fake_options(tmp_path, 1)
    options = dataclasses.replace(options, max_consecutive_failures=1,
                                  env={**options.env, "FAKE_FIT_EPOCH_S": "0.3"})
    run_dir = tmp_path / "runs" / runs_folder(study) / "trial_0000"

    def stop_the_trial_process() -> None:
        deadline = time.monotonic() + 300
        while not (run_dir / "started_2").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in trial_pids(tmp_path):
            os.kill(pid, signal.SIGINT)
            os.kill(pid, signal.SIGTERM)  # twice, two kinds: one stop

    threading.Thread(target=stop_the_trial_process, daemon=True).start()
    summary = run_worker(study, space, storage, options)
    stopped, resumed = study.get_trials()
    assert summary.finished == 1 and summary.trials == [0, 1]
    assert (stopped.state, resumed.state) == (TrialState.FAIL, TrialState.COMPLETE)
    assert stopped.user_attrs["preempted"]["epochs_done"] == 3
    assert resumed.user_attrs["resumes_trial"] == 0
    assert sorted(resumed.intermediate_values) == list(range(6))
    assert not Path(stopped.user_attrs["preempted"]["checkpoint"]).exists()


def test_a_continuation_that_crashes_leaves_no_checkpoint(fake_space: dict[str, Any], sqlite_url: str,
                                                          tmp_path: Path) -> None:
    """Found by the chaos soak: a continuation killed outright (FAIL) left the checkpoint it was
    resuming on disk, where nothing would resume it any more."""
    fake_space["enqueue"] = [{"name": "crash", "params": {"model.head.hidden": 64, "train.lr_head": CRASH}}]
    space = space_from_dict(fake_space)
    storage = open_storage(sqlite_url)
    study, _ = open_study(space, storage, "crashing")
    options = fake_options(tmp_path, 1)
    options = dataclasses.replace(options, env={**options.env, "FAKE_FIT_EPOCH_S": "2"})
    signal_when_written(tmp_path / "runs" / runs_folder(study) / "trial_0000" / "started_0", signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), stop_signals():
        run_one_trial(study, space, storage, options)  # stopped at epoch 1's start: before the crash
    checkpoint = Path(study.get_trials()[0].user_attrs["preempted"]["checkpoint"])
    assert checkpoint.is_file()
    run_worker(study, space, storage, options)
    crashed = study.get_trials()[1]
    assert crashed.user_attrs["resumes_trial"] == 0 and crashed.state == TrialState.FAIL
    assert "without a result" in crashed.user_attrs["fail_reason"]
    assert not checkpoint.exists()
