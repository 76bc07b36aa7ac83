"""EpochReporter: the trainer's per-epoch callback as Optuna reports, stored metrics and prunes."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from fake_fit import epoch_metrics
from search_testing import STUCK_REASON

from search.contract import PRUNE_REASON_ATTR
from search.contract import epoch_metrics as stored_metrics
from search.pruning.pruner import CollapsePruner
from search.trial.reporter import EpochReporter, metric_value

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_each_epoch_is_stored_and_reported() -> None:
    study = optuna.create_study(direction="maximize", pruner=CollapsePruner())
    trial = study.ask()
    reporter = EpochReporter(trial, "val/balanced_accuracy")
    for epoch in range(3):
        reporter(epoch, epoch_metrics(epoch, collapsed=False))
    (stored,) = study.get_trials()
    assert stored.intermediate_values == {0: 0.5, 1: 0.6, 2: pytest.approx(0.7)}
    epoch1 = stored_metrics(stored, 1) or {}
    assert epoch1["val/pred_hist"] == [12, 8, 6, 6]
    assert epoch1["val/per_class_f1"][0] is None  # NaN as null
    assert PRUNE_REASON_ATTR not in stored.user_attrs


def test_a_prune_raises_with_the_reason_the_worker_records() -> None:
    study = optuna.create_study(direction="maximize", pruner=CollapsePruner(patience=2))
    trial = study.ask()
    reporter = EpochReporter(trial, "val/balanced_accuracy")
    reporter(0, epoch_metrics(0, collapsed=True))
    reporter(1, epoch_metrics(1, collapsed=True))  # grace 1: epoch 1 is the first judged
    with pytest.raises(optuna.TrialPruned) as pruned:
        reporter(2, epoch_metrics(2, collapsed=True))
    reason = STUCK_REASON
    assert str(pruned.value) == reason
    assert PRUNE_REASON_ATTR not in study.get_trials()[0].user_attrs  # one writer: the worker's tell


def test_a_plain_optuna_pruner_says_what_it_decided() -> None:
    study = optuna.create_study(direction="maximize",
                                pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    good = study.ask()
    good.report(0.8, 0)
    study.tell(good, 0.8)
    reporter = EpochReporter(study.ask(), "val/balanced_accuracy")
    with pytest.raises(optuna.TrialPruned, match=r"^median: best 0.50 is worse than the median of "
                                                 r"completed trials at epoch 0$"):
        reporter(0, epoch_metrics(0, collapsed=False))


@pytest.mark.parametrize(("metrics", "expected"), [
    ({"val/loss": 0.5}, 0.5), ({"val/loss": 2}, 2.0), ({}, math.nan), ({"val/loss": None}, math.nan),
    ({"val/loss": True}, math.nan), ({"val/loss": "0.5"}, math.nan),
])
def test_metric_value_is_nan_where_there_is_no_number(metrics: dict[str, Any],
                                                      expected: float) -> None:
    value = metric_value(metrics, "val/loss")
    assert value == expected or (math.isnan(value) and math.isnan(expected))
