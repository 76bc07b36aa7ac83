"""How trials ended, per parameter bin, and the information gain that ranks parameters: on trials
made in memory (the knob study of ``test_why.py`` drives the same code through real workers)."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search.contract import PREEMPTED_ATTR, PRUNE_KIND_ATTR, PRUNE_REASON_ATTR, epoch_attr
from search.review.attribution import NOT_SET, Ending, attribute, binned, ending, entropy, information_gain

WEIGHTS = CategoricalDistribution(["auto", "none"])
LR = FloatDistribution(1e-4, 1e-1, log=True)


def trial(state: TrialState, params: dict[str, Any], **attrs: Any) -> optuna.trial.FrozenTrial:
    dists = {"w": WEIGHTS, "lr": LR, "layers": IntDistribution(1, 12), "enc_lr": LR}
    return create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                        params=params, distributions={k: dists[k] for k in params},
                        intermediate_values={0: 0.5}, user_attrs=attrs)


def pruned(params: dict[str, Any], reason: str, kind: str | None = None) -> optuna.trial.FrozenTrial:
    attrs = {PRUNE_REASON_ATTR: reason} | ({PRUNE_KIND_ATTR: kind} if kind else {})
    return trial(TrialState.PRUNED, params, **attrs)


@pytest.mark.parametrize(("made", "expected"), [
    (lambda: trial(TrialState.COMPLETE, {}), Ending.COMPLETE),
    (lambda: pruned({}, "stuck: 100% of validation predictions are class 0", "collapse"), Ending.COLLAPSED),
    (lambda: pruned({}, "reach: at most 0.4 by epoch 9", "inner"), Ending.PRUNED),
    (lambda: pruned({}, "diverged: training diverged", "diverged"), Ending.PRUNED),
    # a study stored before prune kinds: the reason's first word
    (lambda: pruned({}, "collapsed: 97% of validation predictions are class 0"), Ending.COLLAPSED),
    (lambda: pruned({}, "median: best 0.30 is worse than the median"), Ending.PRUNED),
    (lambda: trial(TrialState.FAIL, {}), Ending.FAILED),
    (lambda: trial(TrialState.FAIL, {}, **{PREEMPTED_ATTR: {"reason": "SIGTERM"}}), None),  # re-queued
])
def test_how_a_trial_ended(made: Any, expected: Ending | None) -> None:
    assert ending(made()) == expected


def test_an_inner_prune_at_a_collapsed_epoch_counts_as_a_collapse() -> None:
    """The reach rule can stop a collapsed trial before the collapse rule would (a completed
    trial sets the bar); its last epoch's record says what it was."""
    stuck = {"val/max_class_share": 1.0, "val/balanced_accuracy": 0.25, "val/pred_hist": [40, 0, 0, 0],
             "train/balanced_accuracy": 0.25}
    learns = {**stuck, "train/balanced_accuracy": 0.6}  # one class on validation, but learning
    for record, expected in ((stuck, Ending.COLLAPSED), (learns, Ending.PRUNED)):
        made = create_trial(state=TrialState.PRUNED, intermediate_values={0: 0.25, 1: 0.25},
                            user_attrs={PRUNE_REASON_ATTR: "reach: at most 0.4 by epoch 9",
                                        PRUNE_KIND_ATTR: "inner"},
                            system_attrs={epoch_attr(0): stuck, epoch_attr(1): record})
        assert ending(made) == expected


def test_information_gain_in_bits() -> None:
    assert entropy([3, 3]) == 1.0 and entropy([4, 0]) == 0.0 and entropy([]) == 0.0
    gain, adjusted, p = information_gain([(3, 0), (0, 3)])  # the bin decides: all of H
    assert gain == pytest.approx(1.0)
    assert adjusted == pytest.approx(1.0 - 1 / (2 * 6 * math.log(2)))
    assert p == pytest.approx(0.0039, abs=1e-4)  # G = 12 ln 2 = 8.32 on 1 degree of freedom
    gain, adjusted, p = information_gain([(1, 2), (1, 2), (0, 0)])  # independent; the empty bin ignored
    assert gain == pytest.approx(0.0, abs=1e-12) and adjusted == 0.0 and p == pytest.approx(1.0)
    assert math.isnan(information_gain([(0, 4), (0, 2)])[2])  # no collapse: nothing to test


def test_bins_are_choices_values_or_readable_quantiles_and_not_set() -> None:
    trials = [trial(TrialState.COMPLETE, {"w": w, "layers": n}) for w, n in (("none", 2), ("none", 4), ("auto", 2))]
    trials.append(trial(TrialState.COMPLETE, {}))
    assert binned(trials, "w") == (["none", "none", "auto", NOT_SET], ["auto", "none", NOT_SET])
    assert binned(trials, "layers") == (["2", "4", "2", NOT_SET], ["2", "4", NOT_SET])
    lrs = [1.1e-4, 2e-4, 4e-4, 9e-4, 2e-3, 5e-3, 1e-2, 3e-2]
    labels, order = binned([trial(TrialState.COMPLETE, {"lr": x}) for x in lrs], "lr")
    # 8 trials: 2 bins, cut at the geometric midpoint of 9e-4 and 2e-3, rounded to 2 digits
    assert order == ["< 0.0013", ">= 0.0013"] and labels == [order[0]] * 4 + [order[1]] * 4


def test_attribution_ranks_the_parameter_that_separates_collapsed_trials_first() -> None:
    collapse = "stuck: 100% of validation predictions are class 0"
    trials = [pruned({"w": "none", "lr": 1e-3}, collapse, "collapse"),
              pruned({"w": "none", "lr": 1e-2}, collapse, "collapse"),
              pruned({"w": "auto", "lr": 1e-3}, "reach: at most 0.5", "inner"),
              trial(TrialState.COMPLETE, {"w": "auto", "lr": 1e-2}),
              trial(TrialState.FAIL, {"w": "none", "lr": 1e-2})]
    study = optuna.create_study(direction="maximize")
    study.add_trials(trials)
    a = attribute(study)
    assert (a.total.finished, a.total.by[Ending.FAILED], a.entropy) == (4, 1, 1.0)
    assert [p.name for p in a.params] == ["w", "lr"]
    w = a.params[0]
    assert w.gain == pytest.approx(1.0) and w.n == 4 and a.params[1].gain == pytest.approx(0.0, abs=1e-12)
    (auto_label, auto), (none_label, none) = w.bins
    assert (auto_label, auto.by[Ending.PRUNED], auto.by[Ending.COMPLETE], auto.share(Ending.COMPLETE)) == \
        ("auto", 1, 1, 0.5)
    assert (none_label, none.by[Ending.COLLAPSED], none.by[Ending.FAILED], none.share(Ending.COLLAPSED)) == \
        ("none", 2, 1, 1.0)  # the failed trial counted apart, in no share
