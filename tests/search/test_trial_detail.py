"""``octsearch trial N`` (search/review/trial_detail.py) on a finished fake study with class names."""

from __future__ import annotations

import optuna
import pytest
from search_testing import STUCK_REASON

from search.errors import OctsearchError
from search.review import format_trial


@pytest.fixture
def study(evidence: optuna.Study) -> optuna.Study:
    return evidence


def test_a_pruned_trial_shows_the_epochs_its_rule_fired_on_and_the_last_value_as_the_dashboards(
    study: optuna.Study,
) -> None:
    text = format_trial(study, 0)
    lines = text.splitlines()
    assert lines[:3] == ["study 'evidence': trial 0 (collapses)", "  state: PRUNED after 3 epochs",
                         f"  reason: {STUCK_REASON}"]
    assert ("  dashboard Value: 0.25: the LAST reported balanced_accuracy (epoch 2), which Optuna stores "
            "for a pruned trial; its best was 0.25 at epoch 0") in lines
    # the reason's "(epochs 0-2)": each with its per-class values and confusion matrix, by class name
    assert [line for line in lines if line.startswith(("  prune epoch", "  best epoch"))] == [
        "  prune epoch 0 (also the best epoch): balanced_accuracy 0.25; 97% of validation predictions are normal",
        "  prune epoch 1: balanced_accuracy 0.25; 97% of validation predictions are normal",
        "  prune epoch 2: balanced_accuracy 0.25; 97% of validation predictions are normal"]
    assert text.count("           normal drusen    cnv  fluid") == 3
    assert text.count("    drusen      5      1      0      0") == 3
    # the curve: every epoch's balanced accuracy and majority share, what each epoch was
    assert "  validation by epoch (the collapse rule's test (its defaults): an epoch is collapsed" in text
    assert [line.split() for line in lines if line.startswith("    0 ") or line.startswith("    2 ")] == [
        ["0", "0.250", "97%", "prune,", "best"], ["2", "0.250", "97%", "prune"]]


def test_a_complete_trial_shows_its_best_epoch_and_that_the_value_is_the_best(study: optuna.Study) -> None:
    text = format_trial(study, 2)
    assert "  dashboard Value: 0.9: the best balanced_accuracy (epoch 4), told when it completed" in text
    assert "  best epoch 4: balanced_accuracy 0.9; 38% of validation predictions are normal" in text
    assert "prune epoch" not in text and "    model.head.hidden: 64" in text


def test_a_missing_trial_names_the_range(study: optuna.Study) -> None:
    with pytest.raises(OctsearchError, match=r"^study 'evidence' has no trial 3 \(it has trials 0-2\)$"):
        format_trial(study, 3)
