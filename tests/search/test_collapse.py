"""The collapse rule's pure pieces, alone (the pruner's behaviour is in test_pruner.py)."""

from __future__ import annotations

import math

import pytest

from search.pruning.collapse import (
    EpochEvidence,
    Thresholds,
    collapse_reason,
    effective_grace,
    learning,
    prediction_change,
    prior_loss,
    stuck_reason,
)

T = Thresholds()


def ev(epoch: int, hist: tuple[int, ...] = (97, 3, 0, 0), bacc: float = 0.25, train: float = math.nan,
       loss: float = math.nan, prior: float = math.nan) -> EpochEvidence:
    total = sum(hist)
    top = max(hist)
    return EpochEvidence(epoch, top / total, hist.index(top), bacc, len(hist), hist, train, loss, prior)


@pytest.mark.parametrize(("grace", "unfreeze", "settle", "expected"),
                         [(1, -1, 2, 1), (1, 0, 2, 2), (1, 3, 2, 5), (6, 3, 2, 6), (0, 2, 0, 2)])
def test_effective_grace(grace: int, unfreeze: int, settle: int, expected: int) -> None:
    assert effective_grace(grace, unfreeze, settle) == expected


def test_collapse_reason_needs_contiguous_epochs() -> None:
    gap = [EpochEvidence(1, 0.97, 0, 0.25, 4), EpochEvidence(3, 0.97, 0, 0.25, 4)]
    assert collapse_reason(gap, T, patience=2, grace=1) is None
    run = [EpochEvidence(2, 0.97, 0, 0.25, 4), EpochEvidence(3, 0.95, 2, 0.25, 4)]
    assert collapse_reason(run, T, patience=2, grace=1) == (
        "collapsed: 95% of validation predictions are one class (0, 2) for 2 epochs (epochs 2-3)")


def test_collapse_reason_judges_only_from_the_grace_epoch() -> None:
    run = [ev(0), ev(1), ev(2)]
    assert collapse_reason(run, T, patience=3, grace=1) is None
    assert collapse_reason(run, T, patience=2, grace=1) is not None


@pytest.mark.parametrize(("a", "b", "change"), [
    ((106, 0, 0, 0), (106, 0, 0, 0), 0.0),
    ((106, 0, 0, 0), (103, 3, 0, 0), 3 / 106),
    ((0, 0, 106, 0), (0, 8, 96, 2), 10 / 106),
    ((50, 50), (25, 75), 0.25),  # shares, not counts: a validation set of another size compares
    ((10, 0), (40, 0), 0.0),
])
def test_prediction_change_is_the_total_variation_of_the_histograms(a: tuple[int, ...], b: tuple[int, ...],
                                                                      change: float) -> None:
    assert prediction_change(ev(0, a), ev(1, b)) == pytest.approx(change)


def test_prediction_change_is_nan_without_histograms() -> None:
    assert math.isnan(prediction_change(EpochEvidence(0, 0.9, 0, 0.25, 4), ev(1)))
    assert math.isnan(prediction_change(ev(0, (1, 0, 0, 0)), ev(1, (1, 0, 0))))


@pytest.mark.parametrize(("train", "loss", "prior", "expected"), [
    (0.25, math.nan, math.nan, False),
    (0.30, math.nan, math.nan, False),  # chance 0.25 + train_margin 0.05, inclusive
    (0.3001, math.nan, math.nan, True),
    (math.nan, math.nan, math.nan, False),  # nothing known: no evidence of learning
    (0.25, 0.9, 1.0, False),  # (1 - loss_margin 0.1) x prior, inclusive
    (0.25, 0.8999, 1.0, True),
    (math.nan, 0.5, 1.0, True),
    (0.25, 0.5, math.nan, False),
])
def test_learning_is_training_accuracy_above_chance_or_a_loss_below_the_priors(
        train: float, loss: float, prior: float, expected: bool) -> None:
    assert learning(ev(0, train=train, loss=loss, prior=prior), T) is expected


def test_prior_loss_is_the_entropy_of_the_class_shares() -> None:
    assert prior_loss([106]) == 0.0
    assert prior_loss([25, 25, 25, 25]) == pytest.approx(math.log(4))
    assert prior_loss([7, 1, 1, 1]) == pytest.approx(-(0.7 * math.log(0.7) + 0.3 * math.log(0.1)))
    assert prior_loss([0, 50, 50]) == pytest.approx(math.log(2))
    assert math.isnan(prior_loss([]))


def test_stuck_reason_names_the_class_the_epochs_and_the_evidence_of_no_learning() -> None:
    run = [ev(k, (106, 0, 0, 0), train=0.25 + 0.01 * k, loss=1.0 - 0.02 * k, prior=0.907) for k in range(4)]
    assert stuck_reason(run, T, patience=3) == (
        "stuck: 100% of validation predictions are class 0, unchanged for 3 epochs (epochs 1-3); "
        "training balanced accuracy <= 0.28 (chance 0.25), validation loss >= 0.94 (class prior 0.91)")


def test_stuck_reason_needs_every_epoch_unchanged_collapsed_and_not_learning() -> None:
    base = [ev(k, (106, 0, 0, 0), train=0.25) for k in range(3)]
    assert stuck_reason(base, T, patience=3) is not None
    assert stuck_reason(base[:2], T, patience=3) is None  # too few epochs
    moved = [*base[:2], ev(2, (100, 6, 0, 0), train=0.25)]
    assert stuck_reason(moved, T, patience=3) is None
    train_learns = [*base[:2], ev(2, (106, 0, 0, 0), train=0.4)]
    assert stuck_reason(train_learns, T, patience=3) is None
    loss_learns = [*base[:2], ev(2, (106, 0, 0, 0), train=0.25, loss=0.78, prior=0.91)]
    assert stuck_reason(loss_learns, T, patience=3) is None
    healthy = [*base[:2], ev(2, (40, 30, 20, 16), bacc=0.6, train=0.25)]
    assert stuck_reason(healthy, T, patience=3) is None
    gap = [base[0], base[1], ev(3, (106, 0, 0, 0), train=0.25)]
    assert stuck_reason(gap, T, patience=3) is None


def test_evidence_from_stored_metrics_reads_null_as_nan() -> None:
    e = EpochEvidence.from_metrics(3, {"val/max_class_share": None, "val/balanced_accuracy": 0.3,
                                       "val/majority_class": 1, "val/pred_hist": [1, 2, 3],
                                       "train/balanced_accuracy": None, "val/loss": None})
    assert math.isnan(e.max_class_share) and math.isnan(e.train_balanced_accuracy) and math.isnan(e.loss)
    assert math.isnan(e.prior_loss)  # no confusion matrix stored
    assert (e.epoch, e.majority_class, e.balanced_accuracy, e.num_classes, e.pred_hist) == (3, 1, 0.3, 3, (1, 2, 3))
    with_confusion = EpochEvidence.from_metrics(0, {"val/confusion": [[2, 0], [2, 0]], "val/loss": 0.5})
    assert with_confusion.prior_loss == pytest.approx(math.log(2)) and with_confusion.loss == 0.5


def test_a_reason_names_the_class_where_the_record_does() -> None:
    record = {"val/max_class_share": 1.0, "val/majority_class": 0, "val/majority_class_name": "normal",
              "val/balanced_accuracy": 0.25, "val/pred_hist": [40, 0, 0, 0]}
    run = [EpochEvidence.from_metrics(e, record) for e in (1, 2)]
    assert collapse_reason(run, T, patience=2, grace=1) == (
        "collapsed: 100% of validation predictions are class 0 (normal) for 2 epochs (epochs 1-2)")
    mixed = [EpochEvidence.from_metrics(1, {**record, "val/balanced_accuracy": 0.4}),
             EpochEvidence.from_metrics(2, {**record, "val/balanced_accuracy": 0.26, "val/max_class_share": 0.5})]
    assert "(epoch 1: 100% class 0 (normal); epoch 2: balanced accuracy 0.26)" in (
        collapse_reason(mixed, T, patience=2, grace=1) or "")
