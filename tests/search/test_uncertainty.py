"""search/review/uncertainty.py: a bootstrap interval per completed trial, ties with the best,
a best on a bound of the space; shown by `octsearch best`, chosen by `export-best --trial`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
from search_testing import FAKE_SPACE

from search.contract import record_epoch, write_best_epoch
from search.errors import OctsearchError
from search.review.leaderboard import export_best, format_best, format_leaderboard
from search.review.uncertainty import (
    balanced_accuracy_interval,
    bound_warnings,
    tied_with_best,
    trial_interval,
)
from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study.join import open_study

METRIC = "val/balanced_accuracy"


def test_the_interval_resamples_each_class_and_narrows_with_more_volumes() -> None:
    small = balanced_accuracy_interval([[9, 1], [2, 8]])  # 10 a class: recalls 0.9, 0.8
    large = balanced_accuracy_interval([[90, 10], [20, 80]])
    assert small is not None and large is not None
    assert small.value == large.value == pytest.approx(0.85)
    assert small.per_class == (10, 10) and large.per_class == (100, 100)
    assert small.low < large.low < 0.85 < large.high < small.high
    # per-class binomial: the normal approximation's half-width, within the bootstrap's noise
    half = 1.96 * np.sqrt(0.9 * 0.1 / 100 + 0.8 * 0.2 / 100) / 2
    assert large.high - large.low == pytest.approx(2 * half, rel=0.15)
    assert balanced_accuracy_interval([[9, 1], [2, 8]]) == small  # a fixed seed
    # a perfect or an all-wrong class has no spread; a class with no volume does not count
    assert balanced_accuracy_interval([[5, 0, 0], [0, 5, 0], [0, 0, 0]]) == (
        balanced_accuracy_interval([[5, 0], [0, 5]]))
    assert balanced_accuracy_interval([[0, 0], [0, 0]]) is None
    assert balanced_accuracy_interval([]) is None


def _finished(study: optuna.Study, confusion: list[list[int]]) -> None:
    """The next enqueued trial, completed with one epoch whose matrix is ``confusion``."""
    trial = study.ask()
    trial.suggest_categorical("model.head.hidden", [0, 64])
    trial.suggest_float("train.lr_head", 1e-4, 1e-2, log=True)
    cm = np.asarray(confusion)
    value = float(np.mean(np.diag(cm) / cm.sum(axis=1)))
    record_epoch(trial, 0, {METRIC: value, "val/confusion": confusion}, value)
    write_best_epoch(trial, 0)
    study.tell(trial, value)


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=False)
    study, _ = open_study(space_from_dict(FAKE_SPACE), storage, "ties")
    for params in ({"model.head.hidden": 64, "train.lr_head": 1e-4},    # 0: on the lower bound
                   {"model.head.hidden": 64, "train.lr_head": 1e-3},    # 1
                   {"model.head.hidden": 0, "train.lr_head": 3e-3}):    # 2
        study.enqueue_trial(params)
    _finished(study, [[10, 0], [1, 9]])    # 0.95: the best
    _finished(study, [[9, 1], [1, 9]])     # 0.90: one volume less, tied
    _finished(study, [[6, 4], [5, 5]])     # 0.55: clearly worse
    return study


def test_ties_with_the_best_and_a_best_on_a_bound_are_said(study: optuna.Study, tmp_path: Path) -> None:
    tied = tied_with_best(study)
    assert [t.number for t, _ in tied] == [0, 1]
    assert tied[0][1] == trial_interval(study.trials[0])
    assert bound_warnings(study.trials[0]) == [
        "train.lr_head = 0.0001 sits on the lower bound 0.0001 of its range: the best setting "
        "may lie outside it"]
    assert bound_warnings(study.trials[1]) == []
    text = format_best(study)
    assert f"95% interval: [{tied[0][1].low:.4f}, {tied[0][1].high:.4f}] (bootstrap of each " \
           "class's validation volumes, 10/10 per class)" in text
    assert f"tied with the best (intervals overlap): trial 1 ({tied[1][1]})" in text
    assert "warning: train.lr_head = 0.0001 sits on the lower bound" in text
    assert ("tied with the best (95% intervals overlap): trial 1; octsearch best has the intervals"
            in format_leaderboard(study))
    out = export_best(study, tmp_path / "runner_up.yaml", number=1)
    assert out.read_text().startswith("# octsearch export-best: study 'ties', trial 1, ")
    with pytest.raises(OctsearchError, match="study 'ties' has no trial 7 \\(trials 0-2\\)"):
        export_best(study, tmp_path / "x.yaml", number=7)
    waiting = study.ask()
    with pytest.raises(OctsearchError, match="trial 3 of study 'ties' is RUNNING, not COMPLETE"):
        export_best(study, tmp_path / "x.yaml", number=waiting.number)
