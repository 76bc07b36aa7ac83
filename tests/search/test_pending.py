"""search/worker/pending.py: a kept result is delivered once, and never over a trial finished meanwhile;
what a killed trial process leaves behind (an epoch queue, a checkpoint nothing resumes from) is cleared."""

from __future__ import annotations

import io
from pathlib import Path

import optuna
from optuna.trial import TrialState

from search.contract import RESUME_FROM_ATTR, epoch_metrics, runs_folder, write_preempted
from search.storage.sql import open_storage
from search.trial.epoch_queue import QUEUE_FILE, EpochQueue
from search.trial.process import Outcome, TrialResult
from search.worker.loop import _tell
from search.worker.pending import MARKER_FILE, deliver_pending, keep
from search.worker.requeue import checkpoint_path, drop_orphaned_checkpoints

METRIC = "val/balanced_accuracy"


def _study(tmp_path: Path) -> tuple[optuna.Study, optuna.storages.RDBStorage]:
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=False)
    return optuna.create_study(storage=storage, study_name="s", direction="maximize"), storage


def _keep(tmp_path: Path, study: optuna.Study, trial: optuna.Trial, value: float) -> Path:
    run_dir = tmp_path / "runs" / runs_folder(study) / f"trial_{trial.number:04d}"
    run_dir.mkdir(parents=True)
    queue = EpochQueue(run_dir / QUEUE_FILE)  # as a trial process leaves it in an outage
    queue.add(0, {METRIC: value - 0.1})
    queue.add(1, {METRIC: value})
    keep(run_dir, study.study_name, trial._trial_id, trial.number,
         TrialResult(Outcome.COMPLETE, value=value, best_epoch=1))
    return run_dir


def test_a_kept_result_is_delivered_with_its_queued_epochs(tmp_path: Path) -> None:
    study, storage = _study(tmp_path)
    trial = study.ask()
    run_dir = _keep(tmp_path, study, trial, 0.7)
    out = io.StringIO()
    assert deliver_pending(study, storage, tmp_path / "runs", METRIC, _tell, out=out) == 1
    (frozen,) = study.get_trials()
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.7
    assert frozen.intermediate_values == {0: 0.6, 1: 0.7}
    assert frozen.user_attrs["best_epoch"] == 1 and epoch_metrics(frozen, 1) == {METRIC: 0.7}
    assert not (run_dir / MARKER_FILE).exists() and not (run_dir / QUEUE_FILE).exists()
    assert "delivered the kept result of trial 0 (complete)" in out.getvalue()
    assert deliver_pending(study, storage, tmp_path / "runs", METRIC, _tell) == 0  # once


def test_a_trial_failed_as_stale_meanwhile_is_not_overridden(tmp_path: Path) -> None:
    study, storage = _study(tmp_path)
    trial = study.ask()
    run_dir = _keep(tmp_path, study, trial, 0.7)
    study.tell(trial, state=TrialState.FAIL)  # another worker failed it as stale
    out = io.StringIO()
    assert deliver_pending(study, storage, tmp_path / "runs", METRIC, _tell, out=out) == 0
    (frozen,) = study.get_trials()
    assert frozen.state == TrialState.FAIL and frozen.intermediate_values == {}
    assert "trial 0 is already FAIL: its kept result (complete) is not delivered" in out.getvalue()
    assert not (run_dir / MARKER_FILE).exists() and not (run_dir / QUEUE_FILE).exists()


def test_the_epoch_queue_of_a_trial_that_ended_without_its_process_is_dropped(tmp_path: Path) -> None:
    """A trial process killed in an outage leaves its queue and no marker (found by the chaos
    soak); once the trial is failed as stale the queue goes, a running trial's stays."""
    study, storage = _study(tmp_path)
    dirs = []
    for _ in range(2):
        run_dir = tmp_path / "runs" / runs_folder(study) / f"trial_{study.ask().number:04d}"
        run_dir.mkdir(parents=True)
        EpochQueue(run_dir / QUEUE_FILE).add(0, {METRIC: 0.5})
        dirs.append(run_dir)
    study.tell(0, state=TrialState.FAIL)  # failed as stale; trial 1 still runs
    out = io.StringIO()
    assert deliver_pending(study, storage, tmp_path / "runs", METRIC, _tell, out=out) == 0
    assert not (dirs[0] / QUEUE_FILE).exists() and (dirs[1] / QUEUE_FILE).exists()
    assert "trial 0 is FAIL: the 1 epoch(s) [0] its trial process could not deliver are dropped" \
        in out.getvalue()


def test_a_checkpoint_nothing_resumes_from_is_dropped_and_every_other_kept(tmp_path: Path) -> None:
    """Found by the chaos soak: a trial process killed after writing resume.pt but before its
    preempted record reached the database is restarted from scratch; its checkpoint stayed."""
    study, _ = _study(tmp_path)
    root = tmp_path / "runs"
    x = {"x": optuna.distributions.FloatDistribution(0, 1)}
    trials = [study.ask(x) for _ in range(4)]
    paths = [checkpoint_path(root, study, t.number) for t in trials]
    for path in paths:
        path.parent.mkdir(parents=True)
        path.write_bytes(b"checkpoint")
    study.tell(trials[0], state=TrialState.FAIL)  # killed: no record, restarted from scratch
    write_preempted(trials[1], {"reason": "SIGTERM", "epochs_done": 1, "checkpoint": str(paths[1])})
    study.tell(trials[1], state=TrialState.FAIL)  # re-queued by its worker: the record names it
    study.tell(trials[3], state=TrialState.FAIL)  # no record, but a waiting trial resumes from it
    study.enqueue_trial({"x": 0.5}, user_attrs={RESUME_FROM_ATTR: str(paths[3])})
    out = io.StringIO()
    assert drop_orphaned_checkpoints(study, root, out=out) == 1  # trial 2 still runs: kept
    assert [p.exists() for p in paths] == [False, True, True, True]
    assert "trial 0 is FAIL and nothing resumes from its checkpoint" in out.getvalue()
