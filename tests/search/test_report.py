"""The leaderboard, the best trial, and the exported trainer config of a finished fake study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from search_testing import FAKE_SPACE

from octtrain.config.train_config import load_config
from search.errors import OctsearchError
from search.review.leaderboard import export_best, format_best, format_leaderboard
from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study.join import open_study, stored_space


@pytest.fixture
def study(reviewed_study: tuple[str, str]) -> optuna.Study:
    url, name = reviewed_study
    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))


def test_leaderboard_lists_completed_trials(study: optuna.Study) -> None:
    board = format_leaderboard(study).splitlines()
    assert board[1] == "top 1:" and board[4].split()[:3] == ["2", "(learns)", "COMPLETE"]


def test_best_shows_params_per_class_metrics_and_confusion(study: optuna.Study) -> None:
    text = format_best(study)
    assert "best trial 2 (learns)" in text
    assert "balanced_accuracy: 0.9000 at epoch 4 (6 epochs run)" in text
    assert "    model.head.hidden: 64" in text
    assert "    1      0.9       0.9\n" in text  # class 1: accuracy, F1
    assert "   12     0     0     0" in text  # confusion row of class 0
    assert "run dir: " in text and "trial_0002" in text


def test_export_best_writes_a_complete_trainer_config(study: optuna.Study, tmp_path: Path) -> None:
    out = export_best(study, tmp_path / "best.yaml")
    text = out.read_text()
    assert text.startswith("# octsearch export-best: study 'reviewed', trial 2, "
                           "balanced_accuracy 0.9000\n")
    cfg = load_config(out)
    expected = stored_space(study).trainer_config({
        "model.head.hidden": 64, "train.lr_head": 1e-3,
        # the fake space's relative manifest: relative to the exported file's folder
        "data.manifest": str(tmp_path / "unused.csv")})
    assert cfg == expected
    assert yaml.safe_load(text)["model"]["head"]["hidden"] == 64


def test_best_without_a_completed_trial_says_why(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'empty.db'}")
    study, _ = open_study(space_from_dict(FAKE_SPACE), storage, "empty")
    with pytest.raises(OctsearchError, match=r"no trial of study 'empty' has completed yet "
                                             r"\(no trials\)"):
        format_best(study)
