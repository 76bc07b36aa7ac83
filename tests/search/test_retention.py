"""Checkpoint retention: best.pt for the study's top k trials only, last.pt gone when a trial ends."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from search_testing import FAKE_SPACE, fake_options

from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study.join import open_study
from search.worker.loop import run_worker
from search.worker.retention import kept_bytes, prune_checkpoints


def _trial(run_dir: Path, state: TrialState, value: float | None) -> optuna.trial.FrozenTrial:
    run_dir.mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        (run_dir / name).write_bytes(b"\0" * 100)
    return create_trial(state=state, value=value, params={"x": 0.5},
                        distributions={"x": FloatDistribution(0, 1)},
                        user_attrs={"run_dir": str(run_dir)})


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_pruning_keeps_best_pt_of_exactly_the_top_k(tmp_path: Path, direction: str) -> None:
    study = optuna.create_study(direction=direction)
    values = [0.3, 0.9, 0.1, 0.7, 0.5]
    for i, value in enumerate(values):
        study.add_trial(_trial(tmp_path / f"t{i}", TrialState.COMPLETE, value))
    study.add_trial(_trial(tmp_path / "pruned", TrialState.PRUNED, None))
    study.add_trial(_trial(tmp_path / "failed", TrialState.FAIL, None))
    freed = prune_checkpoints(study, keep_best=2)
    best = sorted(p.parent.name for p in tmp_path.glob("*/best.pt"))
    assert best == (["t1", "t3"] if direction == "maximize" else ["t0", "t2"])
    assert not list(tmp_path.glob("*/last.pt"))
    assert freed == 100 * (7 + 5) and kept_bytes(study) == 200


def test_keep_last_keeps_last_pt(tmp_path: Path) -> None:
    study = optuna.create_study()
    study.add_trial(_trial(tmp_path / "t0", TrialState.COMPLETE, 0.5))
    prune_checkpoints(study, keep_best=0, keep_last=True)
    assert (tmp_path / "t0" / "last.pt").exists() and not (tmp_path / "t0" / "best.pt").exists()


@pytest.mark.parametrize("keep_last", [False, True])
def test_a_search_keeps_best_pt_of_its_top_k_trials(tmp_path: Path, keep_last: bool) -> None:
    raw = dict(FAKE_SPACE, enqueue=[
        {"name": "collapses", "params": {"model.head.hidden": 0, "train.lr_head": 1e-3}},
        {"name": "learns", "params": {"model.head.hidden": 64, "train.lr_head": 1e-3}},
        {"name": "learns too", "params": {"model.head.hidden": 64, "train.lr_head": 2e-3}},
    ])
    space = space_from_dict(raw)
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study, _ = open_study(space, storage, "retention")
    options = fake_options(tmp_path, 3, keep_best=1, keep_last=keep_last)
    options = dataclasses.replace(options, env={**options.env, "FAKE_FIT_CHECKPOINTS": "1"})
    run_worker(study, space, storage, options)
    assert [t.state.name for t in study.get_trials()] == ["PRUNED", "COMPLETE", "COMPLETE"]
    runs = tmp_path / "runs"
    assert [p.parent.name for p in runs.glob("*/*/best.pt")] == ["trial_0001"]  # tie: the earlier
    assert len(list(runs.glob("*/*/last.pt"))) == (3 if keep_last else 0)
    assert kept_bytes(study) == 1000 * (4 if keep_last else 1)
