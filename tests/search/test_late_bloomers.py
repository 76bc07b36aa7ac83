"""Late-bloomer suspects: pruned trials still improving, or pruned near their unfreeze epoch; on
trials made in memory (``test_why.py`` shows one from a real worker)."""

from __future__ import annotations

from collections.abc import Sequence

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.contract import PRUNE_KIND_ATTR, PRUNE_REASON_ATTR, UNFREEZE_ATTR, epoch_attr
from search.review.late_bloomers import late_bloomers, rise, suspicion
from search.study import rerun_attrs


def pruned(val: Sequence[float], train: Sequence[float] | None = None, unfreeze: int = -1,
           reason: str = "reach: at most 0.5", kind: str = "inner") -> optuna.trial.FrozenTrial:
    attrs: dict[str, object] = {PRUNE_REASON_ATTR: reason, PRUNE_KIND_ATTR: kind, UNFREEZE_ATTR: unfreeze}
    records: dict[str, object] = {}  # epoch records are system attributes (search.contract)
    for e, v in enumerate(val):
        records[epoch_attr(e)] = {"val/balanced_accuracy": v} | (
            {"train/balanced_accuracy": train[e]} if train is not None else {})
    return create_trial(state=TrialState.PRUNED, intermediate_values=dict(enumerate(val)),
                        user_attrs=attrs, system_attrs=records)


def test_a_rise_is_measured_over_the_window() -> None:
    assert rise({0: 0.3, 1: 0.35, 2: 0.4}, 2, 2) == (0, 0.3, 0.4)
    assert rise({0: 0.3, 1: 0.35, 2: 0.4}, 2, 1) == (1, 0.35, 0.4)
    assert rise({0: 0.4, 1: 0.35, 2: 0.405}, 2, 2) is None  # +0.005: below MIN_RISE, noise
    assert rise({0: float("nan"), 1: 0.3, 2: 0.4}, 2, 2) == (1, 0.3, 0.4)  # NaN skipped
    assert rise({2: 0.4}, 2, 2) is None  # nothing to compare with


@pytest.mark.parametrize(("trial", "why"), [
    (pruned([0.3, 0.3, 0.3], train=[0.3, 0.4, 0.5]), ["training balanced accuracy 0.30 -> 0.50 (epochs 0-2)"]),
    (pruned([0.3, 0.35, 0.45]), ["validation balanced accuracy 0.30 -> 0.45 (epochs 0-2)"]),
    (pruned([0.5, 0.4, 0.4], unfreeze=1), ["pruned 1 epoch after its unfreeze epoch 1"]),
    (pruned([0.5, 0.4, 0.4], unfreeze=2), ["pruned at its unfreeze epoch 2"]),
    (pruned([0.5, 0.4, 0.4], unfreeze=4), ["pruned 2 epochs before its unfreeze epoch 4"]),
    (pruned([0.5, 0.4, 0.4], unfreeze=5), []),  # 3 epochs before: judged on the frozen head, as designed
    (pruned([0.25, 0.25, 0.25], train=[0.25, 0.25, 0.25], reason="stuck: ...", kind="collapse"), []),
])
def test_suspicion(trial: optuna.trial.FrozenTrial, why: list[str]) -> None:
    assert suspicion(trial, maximize=True) == why


def test_suspects_are_pruned_trials_with_their_reruns() -> None:
    study = optuna.create_study(direction="maximize")
    study.add_trials([
        pruned([0.3, 0.35, 0.45]),
        pruned([0.25, 0.25, 0.25], reason="stuck: 100% class 0", kind="collapse"),
        create_trial(state=TrialState.COMPLETE, value=0.45, intermediate_values={0: 0.3, 1: 0.35, 2: 0.45}),
        create_trial(state=TrialState.COMPLETE, value=0.7, intermediate_values={0: 0.7}, user_attrs=rerun_attrs(0)),
    ])
    (suspect,) = late_bloomers(study)
    assert (suspect.number, suspect.epoch, suspect.kind, suspect.reruns) == (0, 2, "inner", [3])
    assert suspect.reason == "reach: at most 0.5"
