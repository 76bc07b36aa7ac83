"""The trial record: attribute names of stored studies, its readers, and the best step."""

from __future__ import annotations

import math

import optuna
import pytest

from search.contract import (
    CREATION_ID_ATTR,
    best_step,
    end_reason,
    enqueued_name,
    epoch_attr,
    epoch_metrics,
    runs_folder,
    stored_best_epoch,
    stored_overrides,
    unfreeze_at_epoch,
    write_best_epoch,
    write_epoch,
    write_failure,
    write_overrides,
    write_prune_reason,
    write_space,
)

NAN = math.nan


def test_names_of_stored_studies_do_not_change() -> None:
    """Studies already stored are read by these names."""
    study = optuna.create_study()
    trial = study.ask()
    write_epoch(trial, 7, {"val/loss": NAN, "val/pred_hist": [1, 2]})
    write_overrides(trial, {"train.lr_head": 1e-3})
    write_best_epoch(trial, 7)
    write_failure(trial, "RuntimeError: boom", "last\nlines")
    write_prune_reason(trial, "collapsed")
    assert trial.user_attrs == {
        "epoch_007": {"val/loss": None, "val/pred_hist": [1, 2]}, "overrides": {"train.lr_head": 1e-3},
        "best_epoch": 7, "fail_reason": "RuntimeError: boom", "output_tail": "last\nlines",
        "prune_reason": "collapsed"}
    assert epoch_attr(12) == "epoch_012"


def test_readers_of_a_bare_trial_give_their_defaults() -> None:
    study = optuna.create_study()
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert epoch_metrics(trial, 0) is None
    assert unfreeze_at_epoch(trial) == -1
    assert stored_best_epoch(trial) is None
    assert end_reason(trial) == "" and enqueued_name(trial) == ""
    assert stored_overrides(trial) == trial.params  # stored before overrides were


@pytest.mark.parametrize(
    ("values", "maximize", "expected"),
    [({0: 0.2, 1: NAN, 2: 0.5, 3: 0.4}, True, (0.5, 2)),
     ({0: 0.2, 1: NAN, 2: 0.5}, False, (0.2, 0)),
     ({0: 0.3, 1: 0.3}, True, (0.3, 0)),  # the first of equals
     ({0: NAN}, True, (NAN, -1)),
     ({}, True, (NAN, -1))],
)
def test_best_step_skips_nan(values: dict[int, float], maximize: bool,
                             expected: tuple[float, int]) -> None:
    best, step = best_step(values, maximize)
    assert step == expected[1]
    assert best == expected[0] or (math.isnan(best) and math.isnan(expected[0]))


def test_runs_folder_is_the_name_and_the_creation_id() -> None:
    study = optuna.create_study(study_name="s")
    assert runs_folder(study) == "s"  # stored before creation ids existed
    creation_id = write_space(study, {"base": {}}, "space.yaml")
    assert len(creation_id) == 8 and int(creation_id, 16) >= 0
    assert study.user_attrs[CREATION_ID_ATTR] == creation_id
    assert runs_folder(study) == f"s-{creation_id}"
