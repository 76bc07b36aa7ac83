from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

from octtrain.train.metrics import (
    balanced_accuracy,
    confusion_counts,
    confusion_from_predictions,
    macro_f1,
    per_class_f1,
    per_class_recall,
    prediction_entropy,
    summarize,
)

CASES = [
    ([0, 0, 0, 1, 1, 2, 3, 3], [0, 1, 0, 1, 1, 3, 3, 0]),
    ([0, 0, 0, 0, 1, 2, 3], [0, 0, 0, 0, 0, 0, 0]),  # collapsed
    ([0, 1, 2, 3, 0, 1, 2, 3], [3, 2, 1, 0, 0, 1, 2, 3]),
]


@pytest.mark.parametrize(("y", "p"), CASES)
def test_against_scikit_learn(y: list[int], p: list[int]) -> None:
    cm = confusion_from_predictions(y, p, 4)
    np.testing.assert_array_equal(cm, confusion_matrix(y, p, labels=[0, 1, 2, 3]))
    assert balanced_accuracy(cm) == pytest.approx(balanced_accuracy_score(y, p))
    np.testing.assert_allclose(per_class_f1(cm), f1_score(y, p, labels=[0, 1, 2, 3], average=None, zero_division=0))
    present = sorted(set(y) | set(p))
    assert macro_f1(cm) == pytest.approx(f1_score(y, p, labels=present, average="macro", zero_division=0))


def test_collapse_summary_by_hand() -> None:
    cm = confusion_from_predictions([0, 0, 0, 0, 1, 2, 3], [0] * 7, 4)
    s = summarize(cm, "val")
    assert s["val/pred_hist"] == [7, 0, 0, 0]
    assert s["val/max_class_share"] == 1.0
    assert s["val/majority_class"] == 0
    assert s["val/pred_entropy"] == 0.0
    assert s["val/balanced_accuracy"] == pytest.approx(0.25)
    assert s["val/accuracy"] == pytest.approx(4 / 7)
    assert s["val/per_class_accuracy"] == [1.0, 0.0, 0.0, 0.0]


def test_uniform_predictions_have_entropy_log_c() -> None:
    assert prediction_entropy(np.array([5, 5, 5, 5])) == pytest.approx(math.log(4))


def test_absent_class_is_nan_and_left_out_of_balanced_accuracy() -> None:
    cm = confusion_from_predictions([0, 0, 1], [0, 1, 1], 3)
    recall = per_class_recall(cm)
    assert recall[:2].tolist() == [0.5, 1.0] and math.isnan(recall[2])
    assert balanced_accuracy(cm) == pytest.approx(0.75)


def test_empty_matrix_gives_nan() -> None:
    s = summarize(np.zeros((4, 4), dtype=np.int64), "val")
    assert math.isnan(s["val/balanced_accuracy"]) and math.isnan(s["val/accuracy"])
    assert math.isnan(s["val/max_class_share"]) and math.isnan(s["val/pred_entropy"])


def test_counts_sum_across_ranks_unlike_means() -> None:
    """Two ranks with different class mixes: summed counts give the global metric."""
    y_a, p_a = [0, 0, 0, 1], [0, 0, 0, 0]
    y_b, p_b = [1, 1], [1, 1]
    cm = confusion_from_predictions(y_a, p_a, 2) + confusion_from_predictions(y_b, p_b, 2)
    assert balanced_accuracy(cm) == pytest.approx(balanced_accuracy_score(y_a + y_b, p_a + p_b))
    mean_of_means = (balanced_accuracy(confusion_from_predictions(y_a, p_a, 2))
                     + balanced_accuracy(confusion_from_predictions(y_b, p_b, 2))) / 2
    assert mean_of_means != pytest.approx(balanced_accuracy(cm))


def test_device_confusion_counts_match_the_host_ones_and_mask_padding() -> None:
    targets, preds = torch.tensor([0, 1, 2, 2, 1]), torch.tensor([0, 2, 2, 1, 1])
    valid = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.0])  # the last sample is padding
    counts = confusion_counts(targets, preds, 3, valid)
    assert counts.dtype == torch.float32
    assert counts.long().tolist() == confusion_from_predictions([0, 1, 2, 2], [0, 2, 2, 1], 3).tolist()
    assert confusion_counts(targets, preds, 3).sum() == 5
