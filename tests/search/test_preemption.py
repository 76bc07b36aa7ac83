"""A preempted worker, end to end: SIGTERM a real ``octsearch run`` while its trial trains (the
real trainer on tiny phantoms, CPU), then start a worker again.

The trial stops at its next optimizer step with a resume checkpoint, the worker exits 143, the
trial is FAIL with ``preempted`` and a WAITING continuation; the next worker resumes it. Every
epoch is reported exactly once, the study ends with exactly N finished trials, and the resumed
trial's values equal those of a trial that ran the same parameters uninterrupted (bit-exact on
CPU).
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from search_testing import drop_study, reachable_server, storage_proxy

from octtrain.synthetic.writer import make_synthetic
from search.contract import stored_epochs
from search.storage.sql import open_storage

BIN = Path(sys.executable).parent
EPOCHS = 4
N_TRIALS = 2


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 balanced volumes of 4 × 32 × 32: 32 train (16 micro-batches of 2), 8 val."""
    return make_synthetic(tmp_path_factory.mktemp("preempt") / "data", n_volumes=40, frames=4,
                          height=32, width=32, volumes_per_patient=1,
                          class_shares=(0.25, 0.25, 0.25, 0.25), seed=5)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("proxy", marks=pytest.mark.postgres)])
def study_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(storage URL, unique study name); the study is deleted afterwards. ``proxy``: workers
    go through `octsearch serve-storage` in front of the PostgreSQL test server."""
    url = (f"sqlite:///{tmp_path / 'study.db'}" if request.param == "sqlite"
           else reachable_server("postgres"))
    name = f"preempt-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        yield (stack.enter_context(storage_proxy(url, tmp_path)) if request.param == "proxy" else url), name
    drop_study(url, name)


def _space(tmp_path: Path, manifest: Path, epochs: int = EPOCHS) -> Path:
    """One configuration (a single choice), so every trial is the same run: the uninterrupted
    trial is the reference for the resumed one."""
    space = tmp_path / "space.yaml"
    space.write_text(f"""
base:
  model: {{encoder: tiny, head: {{hidden: 16, dropout: 0.2}}}}
  train: {{epochs: {epochs}, batch_size: 2, grad_accum_steps: 2, warmup_epochs: 1,
          early_stopping: {{enabled: false}}}}
  data: {{manifest: {manifest}, frames: 4, height: 32, width: 32, cache_dir: {tmp_path / 'cache'},
         val_fraction: 0.2, test_fraction: 0.0, augment: {{flip: true}}, num_workers: 0}}
  runtime: {{device: cpu}}
objective: {{metric: balanced_accuracy, direction: maximize}}
params:
  train.lr_head: {{type: categorical, choices: [0.002]}}
sampler: {{type: random}}
pruner: none
""")
    return space


@pytest.mark.slow
def test_sigterm_preempts_and_the_next_worker_resumes(study_url: tuple[str, str],
                                                      manifest: Path, tmp_path: Path) -> None:
    url, name = study_url
    cmd = [str(BIN / "octsearch"), "run", "--space", str(_space(tmp_path, manifest)),
           "--trials", str(N_TRIALS), "--storage", url, "--study", name, "--seed", "0",
           "--runs-dir", str(tmp_path / "runs"), "--checkpoint-dir", str(tmp_path / "ckpt")]
    worker = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    assert worker.stderr is not None
    lines = []
    for line in worker.stderr:  # the trainer's first epoch line: epoch 1 (0-based) trains now
        lines.append(line)
        if "[trial 0] epoch   1/4" in line:
            break
    sent = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    _, rest = worker.communicate(timeout=120)
    took = time.monotonic() - sent
    output = "".join(lines) + rest
    print(f"SIGTERM to worker exit: {took:.2f} s")
    assert worker.returncode == 143, output[-3000:]
    assert "octsearch: interrupted by SIGTERM" in output
    assert "[trial 0] octtrain: preempted by SIGTERM at epoch 1, micro-batch" in output
    assert took < 25, took

    storage = open_storage(url, heartbeat=False)
    study = optuna.load_study(study_name=name, storage=storage)
    first, queued = study.get_trials()
    assert first.state == TrialState.FAIL and queued.state == TrialState.WAITING
    info = first.user_attrs["preempted"]
    checkpoint = Path(info["checkpoint"])
    assert checkpoint == tmp_path / "ckpt" / f"{name}-{study.user_attrs['octsearch:creation_id']}" \
        / "trial_0000" / "resume.pt"
    assert checkpoint.is_file() and info["epochs_done"] == 1
    assert first.user_attrs["fail_reason"].startswith("preempted by SIGTERM at epoch 1")
    assert first.user_attrs["fail_reason"].endswith("; re-queued to resume from its checkpoint")
    assert queued.params == first.params
    assert queued.user_attrs["resume_from"] == str(checkpoint)
    assert queued.user_attrs["resumes_trial"] == 0
    assert queued.intermediate_values == {0: first.intermediate_values[0]}
    assert stored_epochs(queued) == stored_epochs(first)[:1]

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"trial 1 resumes preempted trial 0 from {checkpoint}" in again.stderr
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE], states
    resumed, fresh = trials[1], trials[2]
    assert sorted(resumed.intermediate_values) == list(range(EPOCHS))  # each epoch, once (keys)
    assert [e for e, _ in stored_epochs(resumed)] == list(range(EPOCHS))
    # Same parameters and seed: the resumed run equals the uninterrupted one, bit for bit.
    assert resumed.intermediate_values == fresh.intermediate_values
    assert resumed.value == fresh.value
    assert not checkpoint.exists()  # removed once the resumed trial completed


@pytest.mark.slow
def test_sigterm_preempts_every_slot_and_the_next_worker_resumes_them(manifest: Path, tmp_path: Path) -> None:
    """``--parallel 2``: both running trials stop with a resume checkpoint and are re-queued;
    a worker started again resumes both, and each ends with every epoch once. Epochs take
    about 0.2 s: with 60 of them, the slot whose trial process starts first (imports take
    seconds) is still training when the other reaches its second epoch."""
    epochs = 60
    url = f"sqlite:///{tmp_path / 'study.db'}"
    cmd = [str(BIN / "octsearch"), "run", "--space", str(_space(tmp_path, manifest, epochs)),
           "--trials", str(N_TRIALS), "--storage", url, "--study", "slots", "--seed", "0",
           "--runs-dir", str(tmp_path / "runs"), "--parallel", "2"]
    worker = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    assert worker.stderr is not None
    lines: list[str] = []
    for line in worker.stderr:  # both trials train their second epoch
        lines.append(line)
        if all(any(f"[trial {n}] epoch   1/{epochs}" in seen for seen in lines) for n in range(2)):
            break
    worker.send_signal(signal.SIGTERM)
    _, rest = worker.communicate(timeout=120)
    output = "".join(lines) + rest
    assert worker.returncode == 143, output[-3000:]
    study = optuna.load_study(study_name="slots", storage=open_storage(url, heartbeat=False))
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 + [TrialState.WAITING] * 2, output[-3000:]
    assert sorted(t.user_attrs["resumes_trial"] for t in trials[2:]) == [0, 1]
    assert all(t.user_attrs["preempted"]["epochs_done"] >= 1 for t in trials[:2])

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = study.get_trials()[2:]
    assert [t.state for t in resumed] == [TrialState.COMPLETE] * 2, again.stderr[-3000:]
    assert all(sorted(t.intermediate_values) == list(range(epochs)) for t in resumed)  # each epoch once
    # Same parameters and seed, stopped at different steps: both resumed runs end the same.
    assert resumed[0].intermediate_values == resumed[1].intermediate_values
