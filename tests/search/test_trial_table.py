"""``octsearch trials`` (search/review/trial_table.py) on a finished fake study with class names:
PRUNED (stuck at epoch 2), FAIL, COMPLETE (0.9 at epoch 4)."""

from __future__ import annotations

import json

import optuna
import pytest
from search_testing import STUCK_REASON

from search.errors import OctsearchError
from search.review import format_trials
from search.review.trial_table import end_kind


@pytest.fixture
def study(evidence: optuna.Study) -> optuna.Study:
    return evidence


def test_the_default_table_fits_120_columns_with_class_names_and_how_each_trial_ended(
    study: optuna.Study,
) -> None:
    lines = format_trials(study).splitlines()
    assert lines[0] == "study 'evidence': 1 complete, 1 pruned, 1 fail"
    assert lines[1].split() == ["#", "state", "balanced_accuracy", "epoch", "epochs", "normal", "drusen",
                                "cnv", "fluid", "hidden", "lr_head", "end"]
    assert [r.split() for r in lines[3:]] == [
        ["0", "PRUNED", "0.25", "0", "3", "1", "0", "0", "0", "0", "0.001", "stuck@2"],
        ["1", "FAIL", "-", "-", "1", "-", "-", "-", "-", "64", "0.00345", "RuntimeError"],
        ["2", "COMPLETE", "0.9", "4", "6", "0.9", "0.9", "0.9", "0.9", "64", "0.001", "-"]]
    assert max(len(line) for line in lines) <= 120


def test_parameters_that_do_not_fit_are_left_out_and_named(study: optuna.Study) -> None:
    lines = format_trials(study, width=100).splitlines()
    assert "lr_head" not in lines[1] and "hidden" in lines[1] and lines[1].endswith("end")
    assert lines[-1] == "(not shown to fit 100 columns: lr_head; --columns)"
    assert max(len(line) for line in lines[:-1]) <= 100


def test_states_columns_and_formats(study: optuna.Study) -> None:
    table = format_trials(study, states=["pruned"], keys=["number", "reason"]).splitlines()
    assert table[3] == f"0  {STUCK_REASON}"  # whole, never clipped
    rows = json.loads(format_trials(study, states=["complete", "FAIL"], keys=["number", "classes", "params"],
                                    fmt="json"))
    assert rows == [{"number": 1, "normal": None, "drusen": None, "cnv": None, "fluid": None,
                     "hidden": 64, "lr_head": 0.00345},
                    {"number": 2, "normal": 0.9, "drusen": 0.9, "cnv": 0.9, "fluid": 0.9,
                     "hidden": 64, "lr_head": 0.001}]
    assert format_trials(study, sort="value", keys=["number", "model.head.hidden"], fmt="csv") == (
        "#,hidden\n2,64\n0,0\n1,64")


@pytest.mark.parametrize(("option", "message"), [
    ({"keys": ["nope"]}, "unknown column 'nope' in --columns: choose from number, state, value, epoch, "
                         "epochs, classes, params, end, reason, ran_on, name or a parameter (hidden, lr_head)"),
    ({"states": ["done"]}, "unknown state 'done' in --state: choose from running, complete, pruned, fail, waiting"),
])
def test_a_bad_option_is_one_error(study: optuna.Study, option: dict[str, list[str]], message: str) -> None:
    with pytest.raises(OctsearchError) as err:
        format_trials(study, **option)  # type: ignore[arg-type]
    assert str(err.value) == message


@pytest.mark.parametrize(("reason", "kind"), [
    (STUCK_REASON, "stuck"), ("reach: at most 0.61 by epoch 9 (...)", "reach"),
    ("RuntimeError: boom", "RuntimeError"), ("host problem: disk full", "host problem"),
    ("preempted by SIGTERM at epoch 1, micro-batch 0; re-queued", "preempted"),
    ("failed as stale: no heartbeat for 120 s", "failed as stale"), ("", "")])
def test_end_kind(reason: str, kind: str) -> None:
    assert end_kind(reason) == kind
