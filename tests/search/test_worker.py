"""The worker loop with real trial processes running the fake trainer (tests/search/fake_fit.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from fake_fit import CRASH, DIVERGE, HANG, RAISE
from full_disk import FullDisk
from optuna.trial import TrialState
from search_testing import (
    STUCK_REASON,
    fake_env,
    fake_options,
    octsearch_command,
    run_threads,
    signal_when_written,
    write_cli_space,
)

from search.contract import CREATION_ID_ATTR, SPACE_ATTR, epoch_metrics, runs_folder, stored_space_dict
from search.errors import SearchSpaceError, WorkerError
from search.interrupts import stop_signals
from search.space.search_space import SearchSpace, space_from_dict
from search.storage.sql import open_storage
from search.study.counting import Step, next_step
from search.study.join import open_study
from search.worker.loop import WorkerOptions, run_one_trial, run_worker

COLLAPSES = {"model.head.hidden": 0, "train.lr_head": 1e-3}
LEARNS = {"model.head.hidden": 64, "train.lr_head": 1e-3}


def enqueue(raw: dict[str, Any], *trials: dict[str, Any]) -> dict[str, Any]:
    raw["enqueue"] = [{"name": f"t{i}", "params": p} for i, p in enumerate(trials)]
    return raw


def worker(raw: dict[str, Any], url: str, name: str) -> tuple[optuna.Study, SearchSpace, Any]:
    space = space_from_dict(raw)
    storage = open_storage(url)
    study, _ = open_study(space, storage, name, seed=0)
    return study, space, storage


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


@pytest.mark.parametrize(
    ("finished", "running", "n", "step"),
    [(0, 0, 3, Step.START), (2, 0, 3, Step.START), (3, 0, 3, Step.STOP), (4, 1, 3, Step.STOP),
     (2, 1, 3, Step.WAIT), (1, 2, 3, Step.WAIT), (1, 1, 3, Step.START)],
)
def test_next_step_counts_running_trials_of_other_workers(finished: int, running: int, n: int,
                                                          step: Step) -> None:
    assert next_step(finished, running, n) == step


def test_trials_end_complete_pruned_or_diverged(fake_space: dict[str, Any], storage_url: str,
                                                study_name: str, tmp_path: Path) -> None:
    raw = enqueue(fake_space, COLLAPSES, LEARNS,
                  {"model.head.hidden": 64, "train.lr_head": DIVERGE})
    study, space, storage = worker(raw, storage_url, study_name)
    summary = run_worker(study, space, storage, fake_options(tmp_path, 3))
    assert summary.trials == [0, 1, 2] and summary.finished == 3
    collapsed, learned, diverged = study.get_trials()

    assert collapsed.state == TrialState.PRUNED
    assert collapsed.user_attrs["prune_reason"] == STUCK_REASON
    assert collapsed.user_attrs["prune_kind"] == "collapse"  # which rule: the worker stores it too
    assert sorted(collapsed.intermediate_values) == [0, 1, 2]  # stuck for stuck_patience 3 epochs

    assert learned.state == TrialState.COMPLETE
    assert learned.value == pytest.approx(0.9) and learned.user_attrs["best_epoch"] == 4
    epoch0 = epoch_metrics(learned, 0)
    assert epoch0 is not None
    assert epoch0["val/confusion"][1][1] == 8 and epoch0["val/pred_hist"] == [12, 8, 6, 6]
    assert epoch0["val/per_class_f1"][0] is None  # NaN is stored as null
    assert learned.user_attrs["unfreeze_at_epoch"] == -1
    assert learned.user_attrs["overrides"] == LEARNS
    run_dir = Path(learned.user_attrs["run_dir"])
    creation_id = study.user_attrs[CREATION_ID_ATTR]
    assert run_dir == tmp_path / "runs" / f"{study_name}-{creation_id}" / "trial_0001"
    assert "fake epoch 5 bal_acc 0.90" in (run_dir / "trial.log").read_text()

    assert diverged.state == TrialState.PRUNED
    assert diverged.user_attrs["prune_reason"] == (
        "diverged: training diverged: loss is nan in epoch 1")
    assert diverged.user_attrs["prune_kind"] == "diverged"


def test_failed_trials_keep_their_reason_and_the_study_goes_on(
    fake_space: dict[str, Any], sqlite_url: str, tmp_path: Path
) -> None:
    raw = enqueue(fake_space, {"model.head.hidden": 64, "train.lr_head": CRASH},
                  {"model.head.hidden": 64, "train.lr_head": RAISE}, LEARNS)
    study, space, storage = worker(raw, sqlite_url, "fail")
    summary = run_worker(study, space, storage, fake_options(tmp_path, 1))
    assert states(study) == ["FAIL", "FAIL", "COMPLETE"] and summary.finished == 1
    crashed, raised, _ = study.get_trials()
    assert crashed.user_attrs["fail_reason"] == (
        "trial process exited with status 3 without a result: fake_fit: about to crash")
    assert "fake epoch 0" in crashed.user_attrs["output_tail"]
    assert raised.user_attrs["fail_reason"] == "RuntimeError: boom"


def test_worker_stops_after_failures_in_a_row(fake_space: dict[str, Any], sqlite_url: str,
                                              tmp_path: Path) -> None:
    raw = enqueue(fake_space, {"model.head.hidden": 64, "train.lr_head": RAISE},
                  {"model.head.hidden": 0, "train.lr_head": RAISE})
    study, space, storage = worker(raw, sqlite_url, "failing")
    with pytest.raises(WorkerError, match=r"2 trials in a row failed.*RuntimeError: boom"):
        run_worker(study, space, storage,
                   fake_options(tmp_path, 5, max_consecutive_failures=2))
    assert states(study) == ["FAIL", "FAIL"]


def test_a_second_run_joins_and_stops_at_n_finished(fake_space: dict[str, Any],
                                                   sqlite_url: str, tmp_path: Path) -> None:
    raw = enqueue(fake_space, COLLAPSES, LEARNS)
    study, space, storage = worker(raw, sqlite_url, "again")
    run_worker(study, space, storage, fake_options(tmp_path, 2))
    study, created = open_study(space, open_storage(sqlite_url), "again")
    assert not created
    summary = run_worker(study, space, storage, fake_options(tmp_path, 2))
    assert summary.trials == [] and states(study) == ["PRUNED", "COMPLETE"]
    summary = run_worker(study, space, storage, fake_options(tmp_path, 3))
    assert summary.trials == [2] and len(states(study)) == 3


def test_a_new_study_under_an_old_name_gets_run_directories_of_its_own(
    fake_space: dict[str, Any], sqlite_url: str, tmp_path: Path
) -> None:
    raw = enqueue(fake_space, LEARNS)
    old, space, storage = worker(raw, sqlite_url, "reused")
    run_worker(old, space, storage, fake_options(tmp_path, 1))
    old_dir = Path(old.get_trials()[0].user_attrs["run_dir"])
    old_log = (old_dir / "trial.log").read_text()
    old_folder = runs_folder(old)
    optuna.delete_study(study_name="reused", storage=storage)
    new, space, storage = worker(raw, sqlite_url, "reused")  # SQLite may reuse the study id
    assert runs_folder(new) != old_folder
    joined, _, _ = worker(raw, sqlite_url, "reused")
    assert runs_folder(joined) == runs_folder(new)  # every worker of a study agrees
    run_worker(new, space, storage, fake_options(tmp_path, 1))
    new_dir = Path(new.get_trials()[0].user_attrs["run_dir"])
    assert new_dir.name == old_dir.name == "trial_0000" and new_dir != old_dir
    assert (old_dir / "trial.log").read_text() == old_log  # untouched by the new study
    assert (new_dir / "trial.log").read_text().count("fake epoch 0 ") == 1


def test_joining_with_another_space_is_refused(fake_space: dict[str, Any], sqlite_url: str) -> None:
    worker(fake_space, sqlite_url, "same")
    fake_space["params"]["train.lr_head"]["high"] = 0.02
    with pytest.raises(SearchSpaceError) as info:
        worker(fake_space, sqlite_url, "same")
    assert "refusing to join study 'same'" in str(info.value)
    assert "params.train.lr_head.high: stored 0.01, this file 0.02" in str(info.value)


def test_workers_share_one_trial_count(fake_space: dict[str, Any], storage_url: str,
                                       study_name: str, tmp_path: Path) -> None:
    """Two workers, each with its own connection and trial processes, stop at N finished."""
    n = 4
    worker(fake_space, storage_url, study_name)  # created once, joined by both
    options = fake_options(tmp_path, n)
    options = WorkerOptions(**{**options.__dict__, "env": {**options.env,
                                                            "FAKE_FIT_EPOCH_S": "0.1"}})
    def one_worker() -> None:
        study, space, storage = worker(fake_space, storage_url, study_name)
        run_worker(study, space, storage, options)

    errors = run_threads(one_worker, 2, timeout=300)
    assert not errors
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url))
    finished = [t for t in study.get_trials() if t.state in (TrialState.COMPLETE,
                                                            TrialState.PRUNED)]
    assert len(finished) == n
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.FAIL))


@pytest.mark.parametrize(("sig", "how"), [(signal.SIGINT, "interrupted"),
                                        (signal.SIGTERM, "interrupted by SIGTERM")])
def test_interrupt_stops_the_trial_process_and_requeues_the_trial(
    sig: signal.Signals, how: str, fake_space: dict[str, Any], sqlite_url: str,
    tmp_path: Path,
) -> None:
    """Ctrl-C, or SIGTERM as ``octsearch run`` handles it: no trial is left RUNNING. This trial
    process wrote no resume checkpoint (it hung until stopped): its configuration starts again."""
    raw = enqueue(fake_space, {"model.head.hidden": 64, "train.lr_head": HANG})
    study, space, storage = worker(raw, sqlite_url, "hang")
    pid_file = tmp_path / "runs" / runs_folder(study) / "trial_0000" / "pid"
    signal_when_written(pid_file, sig)
    with pytest.raises(KeyboardInterrupt), stop_signals():
        run_one_trial(study, space, storage, fake_options(tmp_path, 1))
    trial, again = study.get_trials()
    assert (trial.state, again.state) == (TrialState.FAIL, TrialState.WAITING)
    assert trial.user_attrs["fail_reason"] == (
        f"worker: {how} before its trial process wrote a resume checkpoint; re-queued to start again")
    assert again.params == trial.params and again.user_attrs["resumes_trial"] == 0
    assert "resume_from" not in again.user_attrs and not again.intermediate_values
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the hanging trial process is gone


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_trials": 0}, "n_trials must be at least 1, but got n_trials=0."),
    ({"n_trials": 1, "timeout_s": 0.0}, "timeout_s must be positive, but got timeout_s=0.0."),
    ({"n_trials": 1, "timeout_s": -5.0}, "timeout_s must be positive, but got timeout_s=-5.0."),
    ({"n_trials": 1, "max_consecutive_failures": 0}, "max_consecutive_failures must be at least 1"),
])
def test_worker_options_quote_the_bad_value(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        WorkerOptions(**kwargs)


def test_a_study_stored_before_a_trainer_setting_existed_can_be_joined(
        fake_space: dict[str, Any], sqlite_url: str) -> None:
    """A study stored by an older octsearch lacks settings added since: at their default they
    are no difference; set to anything else they are."""
    study, _, _ = worker(fake_space, sqlite_url, "older")
    stored = stored_space_dict(study)
    assert stored is not None and stored["base"]["data"]["nonfinite"] == "error"
    del stored["base"]["data"]["nonfinite"]  # as if stored before data.nonfinite existed
    study.set_user_attr(SPACE_ATTR, stored)
    worker(fake_space, sqlite_url, "older")  # joins
    fake_space["base"]["data"]["nonfinite"] = "replace"
    with pytest.raises(SearchSpaceError, match="base.data.nonfinite: not in the stored study"):
        worker(fake_space, sqlite_url, "older")


def test_a_full_disk_requeues_the_configuration_and_stops_the_worker(
        tmp_path: Path, full_disk: Callable[[int], FullDisk]) -> None:
    """The reported case: a full disk in a search failed the trial with tracebacks on the worker's
    stderr and temporary files left behind, and the enqueued configuration was lost. Now: one
    line, the trial FAIL with the host's reason, its configuration back in the queue, the worker
    stopped at its failure limit (here 1), nothing temporary left."""
    disk = full_disk(4_000_000)  # pre-flight asks for 2.7 MB: the tiny encoder's checkpoints
    space = write_cli_space(tmp_path / "space.yaml", enqueue=[
        {"name": "seed", "params": {"model.head.hidden": 64, "train.lr_head": 1e-3}}])
    url = f"sqlite:///{tmp_path / 'study.db'}"
    runs = disk.path / "runs"
    proc = disk.run(octsearch_command("run", "--space", str(space), "--trials", "1", "--storage", url,
                                      "--runs-dir", str(runs), "--max-failures", "1"),
                    env=fake_env(FAKE_FIT_LAST_PT_BYTES="2500000"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("octsearch: error: 1 trials in a row failed; stopping this worker. "
                           "Last (trial 0): host problem: "), last
    study = optuna.load_study(study_name="space", storage=open_storage(url, heartbeat=False))
    failed, queued = study.get_trials()
    assert (failed.state, queued.state) == (TrialState.FAIL, TrialState.WAITING)
    assert failed.user_attrs["fail_reason"].startswith(f"host problem: {disk.cause} writing the last checkpoint ")
    assert failed.user_attrs["fail_reason"].endswith("; its configuration is re-queued")
    assert queued.params == failed.params and queued.user_attrs["enqueued"] == "seed"
    assert not [p for p in disk.kept.rglob("*") if p.name.endswith(".tmp")]
