"""A preempted worker, end to end: SIGTERM a real ``octsearch run`` while its trial trains (the
real trainer on tiny phantoms, CPU), then start a worker again.

The trial stops at its next optimizer step with a resume checkpoint, the worker exits 143, the
trial is FAIL with ``preempted`` and a WAITING continuation; the next worker resumes it. Every
epoch is reported exactly once, the study ends with exactly N finished trials, and the resumed
trial's values equal those of a trial that ran the same parameters uninterrupted (bit-exact on
CPU).
"""

from __future__ import annotations

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
from search_testing import drop_study, reachable_server

from octtrain.synthetic import make_synthetic
from search.storage import open_storage

BIN = Path(sys.executable).parent
EPOCHS = 4
N_TRIALS = 2


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 balanced volumes of 4 × 32 × 32: 32 train (16 micro-batches of 2), 8 val."""
    return make_synthetic(tmp_path_factory.mktemp("preempt") / "data", n_volumes=40, frames=4,
                          height=32, width=32, volumes_per_patient=1,
                          class_shares=(0.25, 0.25, 0.25, 0.25), seed=5)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def study_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(storage URL, unique study name); the study is deleted afterwards."""
    url = (f"sqlite:///{tmp_path / 'study.db'}" if request.param == "sqlite"
           else reachable_server(request.param))
    name = f"preempt-{uuid.uuid4().hex[:8]}"
    yield url, name
    drop_study(url, name)


def _space(tmp_path: Path, manifest: Path) -> Path:
    """One configuration (a single choice), so every trial is the same run: the uninterrupted
    trial is the reference for the resumed one."""
    space = tmp_path / "space.yaml"
    space.write_text(f"""
base:
  model: {{encoder: tiny, head: {{hidden: 16, dropout: 0.2}}}}
  train: {{epochs: {EPOCHS}, batch_size: 2, grad_accum_steps: 2, warmup_epochs: 1,
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
    assert first.user_attrs["fail_reason"].endswith("; re-queued to resume")
    assert queued.params == first.params
    assert queued.user_attrs["resume_from"] == str(checkpoint)
    assert queued.user_attrs["resumes_trial"] == 0
    assert queued.intermediate_values == {0: first.intermediate_values[0]}
    assert queued.user_attrs["epoch_000"] == first.user_attrs["epoch_000"]

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"trial 1 resumes preempted trial 0 from {checkpoint}" in again.stderr
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE], states
    resumed, fresh = trials[1], trials[2]
    assert list(resumed.intermediate_values) == list(range(EPOCHS))  # each epoch, once
    assert all(f"epoch_{e:03d}" in resumed.user_attrs for e in range(EPOCHS))
    # Same parameters and seed: the resumed run equals the uninterrupted one, bit for bit.
    assert resumed.intermediate_values == fresh.intermediate_values
    assert resumed.value == fresh.value
    assert not checkpoint.exists()  # removed once the resumed trial completed
