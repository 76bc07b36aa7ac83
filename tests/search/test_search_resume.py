"""Preempted trials with the fake trainer, on every storage: recorded, re-queued with their
epochs, resumed by the next worker, counted once (see search/worker/requeue.py; the real trainer and
``octsearch run`` end to end are in test_preemption.py)."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState
from search_testing import fake_options, signal_when_written

from search.cli import sigterm_interrupts
from search.contract import runs_folder
from search.review.leaderboard import format_trials
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
    with pytest.raises(KeyboardInterrupt), sigterm_interrupts():
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
    assert sorted(k for k in queued.user_attrs if k.startswith("epoch_")) == [
        "epoch_000", "epoch_001", "epoch_002"]

    summary = run_worker(study, space, storage, options)
    assert summary.finished == 1 and summary.trials == [1]
    first, resumed = study.get_trials()
    assert resumed.state == TrialState.COMPLETE
    assert resumed.intermediate_values == {e: pytest.approx(min(0.9, 0.5 + 0.1 * e))
                                           for e in range(6)}
    assert not (run_dir.parent / "trial_0001" / "started_2").exists()  # it started at epoch 3
    assert not checkpoint.exists()
    table = format_trials(study)
    assert "preempted by SIGTERM at epoch 3" in table
