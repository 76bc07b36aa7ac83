"""The demo, end to end: ``octsearch run`` on spaces/smoke.yaml with the real trainer on CPU.

A fresh working directory holds copies of the space and the trainer config it names, the
synthetic data of the demo and a fresh SQLite study, so the test sees what a user on a new
machine sees.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from octtrain.config.train_config import load_config
from search.storage.sql import open_storage

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
N_TRIALS = 3  # the enqueued trials: the hand-made fix, its collapsed baseline, and that baseline unfreezing late


def octsearch(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(BIN / "octsearch"), *args], cwd=cwd, capture_output=True,
                            text=True, timeout=1200)
    sys.stderr.write(result.stderr)  # shown by pytest when the test fails
    return result


@pytest.mark.slow
def test_smoke_search_end_to_end(demo_manifest: Path, tmp_path: Path) -> None:
    for folder in ("spaces", "configs"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synthetic").symlink_to(demo_manifest.parent)  # what `.ci/demo` writes
    run = ["run", "--space", "spaces/smoke.yaml", "--trials", str(N_TRIALS), "--device", "cpu"]

    first = octsearch(tmp_path, *run)
    assert first.returncode == 0
    assert "created study 'smoke' in sqlite:///octsearch.db" in first.stderr
    assert "[trial 0] epoch" in first.stderr  # the trainer's per-epoch lines come through
    assert "top 1:" in first.stdout or "no trial has completed yet" in first.stdout

    storage = open_storage(f"sqlite:///{tmp_path / 'octsearch.db'}", heartbeat=False)
    study = optuna.load_study(study_name="smoke", storage=storage)
    trials = {t.user_attrs.get("enqueued"): t for t in study.get_trials()}
    assert len(trials) == N_TRIALS

    # Both baselines predict class 0 for everything; the pruner stops them by epoch 2 (0-based),
    # however late the encoder would unfreeze. The one that never unfreezes is judged by the reach
    # rule from epoch 1 (the fix has completed by then: the incumbent); the one that unfreezes at
    # epoch 4 only by the collapse rule's stuck criterion during its warm-up.
    for name, reason in (("seed_baseline", "reach: at most 0.2"),
                         ("late_unfreeze_baseline", "stuck: 100% of validation predictions are class 0")):
        baseline = trials[name]
        assert baseline.state == TrialState.PRUNED
        assert baseline.user_attrs["prune_reason"].startswith(reason), baseline.user_attrs["prune_reason"]
        assert len(baseline.intermediate_values) <= 3
    assert "below the incumbent" in trials["seed_baseline"].user_attrs["prune_reason"]

    fixed = trials["seed_fixed"]
    assert fixed.state == TrialState.COMPLETE, fixed.user_attrs.get("prune_reason")
    assert fixed.value is not None and fixed.value >= 0.6

    again = octsearch(tmp_path, *run)
    assert again.returncode == 0
    assert f"joined study 'smoke' in sqlite:///octsearch.db: {N_TRIALS}/{N_TRIALS} finished" in (
        again.stderr)
    assert "this worker ran 0 trials" in again.stderr
    assert len(study.get_trials()) == N_TRIALS

    best = octsearch(tmp_path, "best", "--space", "spaces/smoke.yaml")
    assert best.returncode == 0 and "per class at that epoch" in best.stdout
    assert all(name in best.stdout for name in ("0_normal", "1_drusen", "2_fluid", "3_atrophy"))

    assert octsearch(tmp_path, "export-best", "--out", "best.yaml").returncode == 0
    run_config = Path(fixed.user_attrs["run_dir"]) / "config.yaml"  # written by octtrain.fit
    assert load_config(tmp_path / "best.yaml") == load_config(run_config)
    # ... and training from it reproduces the trial (same seed, same data, CPU).
    rerun = subprocess.run([str(BIN / "octtrain"), "train", "--config", "best.yaml", "--out", "rerun", "--quiet"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    assert f"val balanced_accuracy {fixed.value:.4f}" in rerun.stdout


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_share_one_postgres_study(tmp_path: Path) -> None:
    """The multi-host set-up on one machine: two `octsearch run` processes with the real trainer
    against one PostgreSQL study; together they stop at N finished trials, none left RUNNING."""
    import uuid

    from search_testing import reachable_server

    url = reachable_server("postgres")
    for folder in ("spaces", "configs"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    subprocess.run([str(BIN / "octtrain"), "make-synthetic", "--out", "data/synthetic", "--n-volumes", "240",
                    "--seed", "1"], cwd=tmp_path, check=True, capture_output=True, timeout=600)
    space = tmp_path / "spaces" / "smoke.yaml"
    space.write_text(space.read_text().replace("train.epochs: 8", "train.epochs: 6"))
    name = f"two-workers-{uuid.uuid4().hex[:8]}"
    n = 3
    cmd = [str(BIN / "octsearch"), "run", "--space", "spaces/smoke.yaml", "--trials", str(n),
           "--storage", url, "--study", name, "--device", "cpu"]
    workers = [subprocess.Popen([*cmd, "--seed", str(seed)], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    try:
        outputs = [w.communicate(timeout=900) for w in workers]
        assert [w.returncode for w in workers] == [0, 0], [err[-2000:] for _, err in outputs]
        storage = open_storage(url, heartbeat=False)
        study = optuna.load_study(study_name=name, storage=storage)
        states = [t.state for t in study.get_trials()]
        finished = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
        assert finished == n, states  # search.study.counting: never more, even asking at once
        assert TrialState.RUNNING not in states
        ran = [int(err.split("this worker ran ")[1].split()[0]) for _, err in outputs]
        # both did work; a trial put back (both asked at once) may stay WAITING, never run
        assert all(r >= 1 for r in ran) and sum(ran) == finished, ran
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        storage = open_storage(url, heartbeat=False)
        if name in optuna.study.get_all_study_names(storage):
            optuna.delete_study(study_name=name, storage=storage)
