"""The trial record: attribute names of stored studies, its readers, and the best step."""

from __future__ import annotations

import math

import optuna
import pytest

from search.contract import (
    CREATION_ID_ATTR,
    attrs_for_retry,
    end_reason,
    enqueued_name,
    epoch_attr,
    epoch_metrics,
    runs_folder,
    stored_best_epoch,
    stored_epochs,
    stored_overrides,
    unfreeze_at_epoch,
    write_best_epoch,
    write_epoch,
    write_failure,
    write_overrides,
    write_prune_reason,
    write_space,
)
from search.ranking import best_step

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
        "overrides": {"train.lr_head": 1e-3},
        "best_epoch": 7, "fail_reason": "RuntimeError: boom", "output_tail": "last\nlines",
        "prune_reason": "collapsed"}
    # epoch records are system attributes (optuna-dashboard renders every user attribute)
    assert study.trials[0].system_attrs == {"octsearch:epoch_007": {"val/loss": None, "val/pred_hist": [1, 2]}}
    assert epoch_attr(12) == "octsearch:epoch_012"


def test_epoch_records_of_earlier_versions_are_read_and_moved_on_retry() -> None:
    """Studies stored before the move hold ``epoch_NNN`` user attributes: still read; a record in
    both homes is read from the new one; a re-queued trial keeps the records it is told to keep,
    in the new home."""
    study = optuna.create_study()
    trial = study.ask()
    trial.set_user_attr("enqueued", "seed")
    trial.set_user_attr("epoch_000", {"val/loss": 1.0})
    trial.set_user_attr("epoch_001", {"val/loss": 0.9})
    write_epoch(trial, 1, {"val/loss": 0.8})
    stored = study.trials[0]
    assert epoch_metrics(stored, 0) == {"val/loss": 1.0} and epoch_metrics(stored, 1) == {"val/loss": 0.8}
    assert stored_epochs(stored) == [(0, {"val/loss": 1.0}), (1, {"val/loss": 0.8})]
    assert attrs_for_retry(stored) == ({"enqueued": "seed"}, {})
    assert attrs_for_retry(stored, 1) == ({"enqueued": "seed"}, {"octsearch:epoch_000": {"val/loss": 1.0}})


def test_readers_of_a_bare_trial_give_their_defaults() -> None:
    study = optuna.create_study()
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    assert epoch_metrics(study.trials[0], 0) is None and stored_epochs(study.trials[0]) == []
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
