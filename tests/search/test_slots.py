"""A worker running two trials at once (``--parallel 2``), each on its own CPU core, with real
trial processes of the fake trainer (tests/search/fake_fit.py)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from fake_fit import CRASH, HANG, RAISE
from optuna.trial import FrozenTrial, TrialState
from search_testing import fake_env, fake_options, octsearch_command, write_cli_space

import search.storage.sql as storage_mod
from search.cli import main
from search.contract import runs_folder
from search.interrupts import stop_signals
from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study.join import open_study
from search.trial.placement import available_devices, plan_slots
from search.worker.loop import WorkerOptions, ask_trial, run_worker

LEARNS = {"model.head.hidden": 64, "train.lr_head": 1e-3}


def two_slots(tmp_path: Path, n_trials: int, **kwargs: Any) -> WorkerOptions:
    """Fake-trainer options with two CPU slots of one core each (epochs of 0.2 s)."""
    cores = available_devices("cpu", 0)
    if len(cores) < 2:
        pytest.skip(f"two slots need two cores, this process has {cores}")
    options = fake_options(tmp_path, n_trials, slots=tuple(plan_slots("cpu", cores[:2], 2)),
                           **kwargs)
    return dataclasses.replace(options, env={**options.env, "FAKE_FIT_EPOCH_S": "0.2"})


def open_fake(raw: dict[str, Any], url: str, name: str) -> tuple[optuna.Study, Any, Any]:
    space = space_from_dict(raw)
    storage = open_storage(url)
    study, _ = open_study(space, storage, name, seed=0)
    return study, space, storage


class RunningSampler:
    """In the background, the study's RUNNING trials as the database has them, every 50 ms."""

    def __init__(self, url: str, name: str) -> None:
        self.study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
        self.counts: list[int] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while not self.done.wait(0.05):
            running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            self.counts.append(len(running))

    def stop(self) -> list[int]:
        self.done.set()
        self.thread.join()
        return self.counts


def assignment(trial: FrozenTrial) -> dict[str, Any]:
    """What the trial's process saw (written by fake_fit)."""
    return dict(json.loads((Path(trial.user_attrs["run_dir"]) / "assignment.json").read_text()))


def test_two_slots_finish_n_trials_two_at_a_time_each_on_its_own_core(
    fake_space: dict[str, Any], storage_url: str, study_name: str, tmp_path: Path,
) -> None:
    study, space, storage = open_fake(fake_space, storage_url, study_name)
    sampler = RunningSampler(storage_url, study_name)
    out = io.StringIO()
    summary = run_worker(study, space, storage, two_slots(tmp_path, 5), out=out)
    counts = sampler.stop()

    trials = study.get_trials()
    assert [t.state for t in trials].count(TrialState.FAIL) == 0 and len(trials) == 5
    assert summary.finished == 5 and sorted(summary.trials) == [0, 1, 2, 3, 4]
    assert max(counts) == 2 and len(counts) > 20  # two at once, never more
    cores = available_devices("cpu", 0)[:2]
    for trial in trials:
        seen = assignment(trial)
        slot = int(seen["OCTSEARCH_SLOT"])
        assert seen["affinity"] == [cores[slot]]  # its own core, and only that one
        assert seen["OCTSEARCH_CPU_CORES"] == str(cores[slot]) and seen["OMP_NUM_THREADS"] == "1"
        assert trial.user_attrs["devices"] == f"cpu:{cores[slot]}"
        assert trial.user_attrs["host"]
    assert {assignment(t)["OCTSEARCH_SLOT"] for t in trials} == {"0", "1"}
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith(("[slot 0] ", "[slot 1] ")) for line in lines)
    assert any("[trial 3] fake epoch 5" in line for line in lines)


def test_sigterm_stops_both_running_trials_and_requeues_them(
    fake_space: dict[str, Any], sqlite_url: str, tmp_path: Path,
) -> None:
    hang = {"model.head.hidden": 64, "train.lr_head": HANG}
    fake_space["enqueue"] = [{"name": f"h{i}", "params": hang} for i in range(2)]
    study, space, storage = open_fake(fake_space, sqlite_url, "hang2")
    folder = tmp_path / "runs" / runs_folder(study)
    pid_files = [folder / f"trial_000{i}" / "pid" for i in range(2)]

    def terminate_when_both_hang() -> None:
        deadline = time.monotonic() + 60
        while not all(p.exists() for p in pid_files) and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_when_both_hang, daemon=True).start()
    with pytest.raises(KeyboardInterrupt), stop_signals():
        run_worker(study, space, storage, two_slots(tmp_path, 4))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.WAITING] * 2
    assert {t.user_attrs["fail_reason"] for t in trials[:2]} == {
        "worker: interrupted by SIGTERM before its trial process wrote a resume checkpoint; "
        "re-queued to start again"}
    assert sorted(t.user_attrs["resumes_trial"] for t in trials[2:]) == [0, 1]
    for pid_file in pid_files:
        with pytest.raises(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 0)  # both trial processes are gone


def test_a_slot_whose_trial_crashes_is_refilled(
    fake_space: dict[str, Any], sqlite_url: str, tmp_path: Path,
) -> None:
    crash = {"model.head.hidden": 64, "train.lr_head": CRASH}
    fake_space["enqueue"] = [{"name": "crash", "params": crash}]
    study, space, storage = open_fake(fake_space, sqlite_url, "crash2")
    summary = run_worker(study, space, storage, two_slots(tmp_path, 3))
    trials = study.get_trials()
    assert [t.state for t in trials].count(TrialState.FAIL) == 1 and summary.finished == 3
    assert len(trials) == 4
    crashed_slot = trials[0].user_attrs["devices"]
    assert [t.user_attrs["devices"] for t in trials[1:]].count(crashed_slot) >= 1


def test_a_slot_at_its_failure_limit_stops_and_the_other_goes_on(
    fake_space: dict[str, Any], sqlite_url: str, tmp_path: Path,
) -> None:
    fake_space["enqueue"] = [
        {"name": "raises", "params": {"model.head.hidden": 64, "train.lr_head": RAISE}},
        {"name": "learns", "params": LEARNS},
    ]
    study, space, storage = open_fake(fake_space, sqlite_url, "limit2")
    out = io.StringIO()
    summary = run_worker(study, space, storage,
                         two_slots(tmp_path, 3, max_consecutive_failures=1), out=out)
    trials = study.get_trials()
    assert summary.finished == 3 and trials[0].state == TrialState.FAIL
    failed_slot = trials[0].user_attrs["devices"]
    assert all(t.user_attrs["devices"] != failed_slot for t in trials[1:])
    assert "1 trials in a row failed; stopping this slot. Last (trial 0): RuntimeError: boom" \
        in out.getvalue()


def test_octsearch_run_parallel_2_and_the_trials_table_shows_where_each_ran(
    tmp_path: Path,
) -> None:
    cores = available_devices("cpu", 0)
    if len(cores) < 2:
        pytest.skip(f"two slots need two cores, this process has {cores}")
    space = write_cli_space(tmp_path / "par.yaml")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    run = subprocess.run(octsearch_command("run", "--space", str(space), "--trials", "3",
                                           "--parallel", "2", "--device", "cpu",
                                           "--storage", storage),
                         cwd=tmp_path, env=fake_env(), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert (f"octsearch: 2 trials at once: slot 0 on cpu:{cores[0]}, slot 1 on cpu:{cores[1]}"
            in run.stderr)
    assert "[slot 1] octsearch: trial " in run.stderr
    table = subprocess.run(octsearch_command("trials", "--storage", storage, "--columns",
                                             "number,state,ran_on"), cwd=tmp_path,
                           env=fake_env(), capture_output=True, text=True, timeout=120)
    rows = table.stdout.splitlines()[3:]
    host = socket.gethostname()
    assert len(rows) == 3 and all(f"{host} cpu:" in row for row in rows)
    assert {f"cpu:{c}" for c in cores[:2]} == {r.split(host)[1].split()[0] for r in rows}


@pytest.mark.parametrize(("args", "message"), [
    (["--parallel", "0"], "--parallel must be at least 1, got 0"),
    (["--parallel", "two"], "--parallel must be a number of trials or 'auto', got 'two'"),
    (["--parallel", "999"], "--parallel 999 with 1 device(s) per trial needs 999 CPU cores, "
                            "but this worker has"),
    (["--devices-per-trial", "0"], "--devices-per-trial must be at least 1, got 0"),
])
def test_run_refuses_slots_that_cannot_be(args: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    space = write_cli_space(tmp_path / "bad.yaml")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["run", "--space", str(space), "--trials", "2", "--device", "cpu",
                 "--storage", storage, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("octsearch: error: ") and message in err[0]
    assert not (tmp_path / "study.db").exists()  # refused before any study was made


def test_a_stale_trial_of_a_dead_worker_is_retried_in_a_free_slot(
    fake_space: dict[str, Any], sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(storage_mod, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(storage_mod, "GRACE_PERIOD_S", 2)  # not 2 minutes: a test
    fake_space["enqueue"] = [{"name": "orphan", "params": LEARNS}]
    study, space, storage = open_fake(fake_space, sqlite_url, "stale2")
    orphan = ask_trial(study)  # a worker that died after one heartbeat
    space.suggest(orphan)
    storage.record_heartbeat(orphan._trial_id)
    summary = run_worker(study, space, storage, two_slots(tmp_path, 2))
    trials = study.get_trials()
    assert summary.finished == 2 and trials[0].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == trials[0].params == LEARNS
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
