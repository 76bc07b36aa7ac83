"""A trial process dies with its worker: the parent-death signal, and the lifeline pipe alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_fit import HANG
from optuna.trial import TrialState
from search_testing import alive, fake_env, fake_options, octsearch_command, trial_pids, write_cli_space

from search.space.search_space import load_space
from search.storage import sql as storage_mod
from search.storage.sql import open_storage
from search.study.join import open_study
from search.trial.lifeline import WORKER_PID_ENV, lifeline
from search.worker.loop import run_worker

GONE_WITHIN_S = 10.0


def seconds_until_gone(pids: list[int], limit: float = 30.0) -> float:
    start = time.monotonic()
    while any(alive(p) for p in pids) and time.monotonic() - start < limit:
        time.sleep(0.05)
    return time.monotonic() - start


def kill_leftovers(*pids: int | None) -> None:
    """SIGKILL what a failed test left running (the processes it started, by pid)."""
    for pid in pids:
        if pid is not None and alive(pid):
            os.kill(pid, signal.SIGKILL)


def wait_for(path_glob: str, root: Path, proc: subprocess.Popen[bytes], timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        assert proc.poll() is None, f"exited with {proc.returncode} before {path_glob} appeared"
        time.sleep(0.1)
    raise AssertionError(f"{path_glob} did not appear in {timeout} s")


def test_a_sigkilled_worker_takes_its_trial_process_with_it(tmp_path: Path) -> None:
    space = write_cli_space(tmp_path / "hang.yaml", enqueue=[
        {"name": "hang", "params": {"model.head.hidden": 64, "train.lr_head": HANG}}])
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        octsearch_command("run", "--space", str(space), "--trials", "1",
                          "--storage", f"sqlite:///{tmp_path / 'study.db'}"),
        cwd=tmp_path, env=fake_env(), stdout=log, stderr=log)
    try:
        pid_file = wait_for("runs/*/trial_0000/pid", tmp_path, worker)  # the trial hangs
        while not pid_file.read_text():
            time.sleep(0.05)
        trial_pid = int(pid_file.read_text())
        assert alive(trial_pid)
        worker.kill()
        worker.wait()
        took = seconds_until_gone([trial_pid])
    finally:
        if worker.poll() is None:
            worker.kill()
        kill_leftovers(locals().get("trial_pid"))
    print(f"trial process outlived its SIGKILLed worker by {took:.2f} s")
    assert took < GONE_WITHIN_S


def test_after_a_sigkilled_worker_another_resumes_its_trial_and_the_study_ends_at_n(
    storage_url: str, study_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The killed worker's trial process gets SIGTERM from its lifeline: it stops at its next step
    with a resume checkpoint and stores that it did, then is gone. No write reaches the trial after
    it is failed as stale; the next worker resumes it from the checkpoint (nothing orphaned) and the
    study ends with N finished."""
    learns = {"model.head.hidden": 64, "train.lr_head": 1e-3}
    space_file = write_cli_space(tmp_path / "space.yaml",
                                 enqueue=[{"name": "learns", "params": learns}])
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        octsearch_command("run", "--space", str(space_file), "--trials", "1", "--storage",
                          storage_url, "--study", study_name),
        cwd=tmp_path, env=fake_env(FAKE_FIT_EPOCH_S="1"), stdout=log, stderr=log)
    try:
        log_file = wait_for("runs/*/trial_0000/trial.log", tmp_path, worker)
        while "fake epoch 2 " not in log_file.read_text():  # mid-trial: epochs 0 and 1 reported
            assert worker.poll() is None
            time.sleep(0.1)
        pids = trial_pids(tmp_path)
        assert len(pids) == 1
        worker.kill()
        worker.wait()
        assert seconds_until_gone(pids) < GONE_WITHIN_S
    finally:
        if worker.poll() is None:
            worker.kill()
        kill_leftovers(*trial_pids(tmp_path))
    monkeypatch.setattr(storage_mod, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(storage_mod, "GRACE_PERIOD_S", 2)  # not 2 minutes: a test
    space = load_space(space_file)
    storage = open_storage(storage_url)
    study, created = open_study(space, storage, study_name)
    assert not created
    (dead,) = study.get_trials()
    done = len(dead.intermediate_values)
    assert dead.state == TrialState.RUNNING and done >= 2
    checkpoint = Path(dead.user_attrs["preempted"]["checkpoint"])
    assert checkpoint.is_file() and dead.user_attrs["preempted"]["epochs_done"] == done
    summary = run_worker(study, space, storage, fake_options(tmp_path, 1))
    failed, resumed = study.get_trials()
    assert [failed.state, resumed.state] == [TrialState.FAIL, TrialState.COMPLETE]
    assert summary.finished == 1 and summary.trials == [1]
    assert failed.intermediate_values == dead.intermediate_values  # nothing written after
    reason = failed.user_attrs.get("fail_reason", "")
    assert reason.startswith("failed as stale: no heartbeat for 2 s (its worker on "), reason
    assert reason.endswith("its trial process had stopped with a resume checkpoint: re-queued to "
                           "resume from it"), reason
    assert {k: v for k, v in failed.user_attrs.items() if k != "fail_reason"} == dead.user_attrs  # nothing else
    assert resumed.params == failed.params == learns
    assert resumed.user_attrs["resumes_trial"] == failed.number
    assert resumed.user_attrs["enqueued"] == "learns"
    assert sorted(resumed.intermediate_values) == list(range(6))  # every epoch once, old and new
    assert not checkpoint.exists()  # resumed and removed, not orphaned


PARENT = """
import os, subprocess, sys, time
from search.trial.lifeline import lifeline
with lifeline() as (env, fds):
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env={**os.environ, **env},
                             pass_fds=fds, start_new_session=True,
                             stderr=subprocess.PIPE)  # read by the parent only, as by a worker
    print(child.pid, flush=True)
    time.sleep(3600)
"""

CHILD = """
import subprocess, sys, time
from search.trial.lifeline import die_with_parent
die_with_parent(pdeathsig=False)  # the pipe alone, as where there is no prctl
loader = subprocess.Popen(["sleep", "3600"])  # a child of the trial, in its process group
print(loader.pid, flush=True)
time.sleep(3600)
"""


def test_the_lifeline_alone_stops_the_trial_and_its_process_group() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        loader_pid = int(parent.stdout.readline())  # the child inherited the parent's stdout
        assert alive(child_pid) and alive(loader_pid)
        parent.kill()
        parent.wait()
        took = seconds_until_gone([child_pid, loader_pid])
    finally:
        if parent.poll() is None:
            parent.kill()
        kill_leftovers(locals().get("child_pid"), locals().get("loader_pid"))
    print(f"lifeline only: trial process and its child gone {took:.2f} s after the parent")
    assert took < GONE_WITHIN_S


def test_a_trial_process_whose_worker_is_already_gone_stops_at_once() -> None:
    """The worker died between starting the child and the child's prctl call: the child's
    parent is no longer the pid it was given."""
    code = "from search.trial.lifeline import die_with_parent; die_with_parent(); print('ran on')"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, WORKER_PID_ENV: "1"}, start_new_session=True,
                          timeout=60)
    assert proc.returncode == -signal.SIGTERM
    assert "ran on" not in proc.stdout
    assert proc.stderr.strip().endswith("the worker was gone before the trial process started; "
                                        "stopping")


def test_the_lifeline_pipe_is_closed_after_the_block() -> None:
    with lifeline() as (env, fds):
        (read_fd,) = fds
        assert env[WORKER_PID_ENV] == str(os.getpid())
        os.fstat(read_fd)
    try:
        os.fstat(read_fd)
    except OSError:
        return
    raise AssertionError("the read end is still open")
