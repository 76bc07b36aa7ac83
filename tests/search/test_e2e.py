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

from octtrain.config import load_config
from search.space import load_space
from search.storage import open_storage

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
N_TRIALS = 2  # the two enqueued trials: the seed's fix and its collapsed baseline


def octsearch(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(BIN / "octsearch"), *args], cwd=cwd, capture_output=True,
                            text=True, timeout=1200)
    sys.stderr.write(result.stderr)  # shown by pytest when the test fails
    return result


@pytest.mark.slow
def test_smoke_search_end_to_end(tmp_path: Path) -> None:
    for folder in ("spaces", "configs"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    subprocess.run([str(BIN / "octtrain"), "make-synthetic", "--out", "data/synthetic",
                    "--seed", "0"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=600)
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

    collapse = load_space(tmp_path / "spaces/smoke.yaml").pruner.collapse
    baseline = trials["seed_baseline"]
    assert baseline.state == TrialState.PRUNED
    assert baseline.user_attrs["prune_reason"].startswith("collapsed: ")
    assert len(baseline.intermediate_values) <= (
        collapse["grace_epochs"] + collapse["patience"] + 1)

    fixed = trials["seed_fixed"]
    assert fixed.state == TrialState.COMPLETE, fixed.user_attrs.get("prune_reason")
    assert fixed.value is not None and fixed.value >= 0.6

    again = octsearch(tmp_path, *run)
    assert again.returncode == 0
    assert f"joined study 'smoke' in sqlite:///octsearch.db: {N_TRIALS}/{N_TRIALS} finished" in (
        again.stderr)
    assert "this worker ran 0 trials" in again.stderr
    assert len(study.get_trials()) == N_TRIALS

    assert octsearch(tmp_path, "export-best", "--out", "best.yaml").returncode == 0
    run_config = Path(fixed.user_attrs["run_dir"]) / "config.yaml"  # written by octtrain.fit
    assert load_config(tmp_path / "best.yaml") == load_config(run_config)
