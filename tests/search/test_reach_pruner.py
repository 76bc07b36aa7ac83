"""ReachPruner through Optuna's public loop: ask, store the epoch's record, report, should_prune.

Each epoch a test stores the trainer's metrics the way the reporter does
(:func:`search.contract.write_epoch`, with the validation confusion matrix that sets the set's resolution and the
training balanced accuracy) and reports the objective; a completed trial is told its best value,
as the worker tells it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import optuna
import pytest

from search.contract import write_epoch, write_schedule
from search.pruning import CollapsePruner, ReachPruner, prune_reason, reach, resolution

optuna.logging.set_verbosity(optuna.logging.WARNING)

COUNTS = (74, 11, 11, 10)  # validation volumes per class: one volume of class 3 is 1/40 = 0.025
TINY = (6, 2, 2, 2)  # a tiny validation set: one volume of a minority class is 1/8 = 0.125


def record(bacc: float, train: float | None, counts: Sequence[int] = COUNTS) -> dict[str, object]:
    out: dict[str, object] = {"val/balanced_accuracy": bacc,
                              "val/confusion": [[n if i == j else 0 for j in range(len(counts))]
                                                for i, n in enumerate(counts)]}
    if train is not None:
        out["train/balanced_accuracy"] = train
    return out


def run(study: optuna.Study, values: Sequence[float], train: Sequence[float | None] | None = None, *,
        budget: int = 10, unfreeze: int = -1, counts: Sequence[int] = COUNTS) -> tuple[int | None, str | None]:
    """One trial over ``values`` (its budget is ``budget`` epochs): (epoch pruned at, reason) or (None, None)."""
    trial = study.ask()
    write_schedule(trial, unfreeze_at_epoch=unfreeze, epochs=budget)
    train = train if train is not None else [None] * len(values)
    for epoch, (value, fit) in enumerate(zip(values, train, strict=True)):
        write_epoch(trial, epoch, record(value, fit, counts))
        trial.report(value, epoch)
        if trial.should_prune():
            (stored,) = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            reason = prune_reason(study.pruner, study, stored)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return epoch, reason
    study.tell(trial, max(values))
    return None, None


def study_with_incumbent(pruner: optuna.pruners.BasePruner, incumbent: float = 0.85,
                         counts: Sequence[int] = COUNTS, budget: int = 10) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    assert run(study, [0.4] * (budget - 1) + [incumbent], budget=budget, counts=counts) == (None, None)
    return study


def test_a_late_bloomer_whose_validation_stalls_while_training_rises_is_kept() -> None:
    # Validation stalls at 0.46 for two epochs; training balanced accuracy keeps rising.
    values = [0.30, 0.45, 0.46, 0.46, 0.46, 0.93, 0.95, 0.96, 0.96, 0.97]
    train = [0.35, 0.50, 0.62, 0.75, 0.84, 0.90, 0.94, 0.96, 0.97, 0.98]
    study = study_with_incumbent(ReachPruner())
    assert run(study, values, train) == (None, None)
    assert study.best_value == pytest.approx(0.97)
    # The same validation record with training at a standstill has no pace left: pruned.
    study = study_with_incumbent(ReachPruner())
    pruned_at, _ = run(study, values, [0.35, 0.50, 0.50, 0.50, 0.50, 0.5, 0.5, 0.5, 0.5, 0.5])
    assert pruned_at == 3  # 0.46 + 0.025 + 0.005 x 6 < 0.85


def test_a_learner_that_can_no_longer_reach_the_incumbent_is_pruned_with_why() -> None:
    study = study_with_incumbent(ReachPruner())
    pruned_at, reason = run(study, [0.30, 0.40, 0.45, 0.46, 0.46, 0.47, 0.47, 0.47, 0.47, 0.47],
                            [0.40, 0.45, 0.47, 0.48, 0.48, 0.48, 0.48, 0.48, 0.48, 0.48])
    # Epoch 3: best 0.46, +0.03/epoch over epochs 1-3 for 6 more epochs, + 0.025: 0.665 < 0.85.
    assert pruned_at == 3
    assert reason == ("reach: at most 0.67 by epoch 9 (best 0.46 at epoch 3, +0.030/epoch (best validation value, "
                      "epochs 1-3) for 6 more epochs, +0.025 for the validation set's resolution), below the "
                      "incumbent 0.85 (trial 0)")


def test_a_drop_by_one_volume_on_a_tiny_validation_set_is_not_pruned() -> None:
    # 2 volumes in each minority class: one volume is 0.125 of balanced accuracy.
    study = study_with_incumbent(ReachPruner(), incumbent=0.80, counts=TINY, budget=6)
    assert resolution(record(0.5, None, TINY)) == pytest.approx(0.125)
    assert run(study, [0.75, 0.75, 0.75, 0.625, 0.75, 0.75], [0.6] * 6, budget=6, counts=TINY) == (None, None)
    # Without the resolution allowance the same trial is below the incumbent with no pace: pruned.
    study = study_with_incumbent(ReachPruner(tolerance_volumes=0.0), incumbent=0.80, counts=TINY, budget=6)
    assert run(study, [0.75, 0.75, 0.75, 0.625, 0.75, 0.75], [0.6] * 6, budget=6, counts=TINY)[0] == 1


@pytest.mark.parametrize(("unfreeze", "first"), [(-1, 1), (0, 1), (3, 4), (6, 7)])
def test_the_frozen_warm_up_and_the_unfreeze_epoch_are_never_judged(unfreeze: int, first: int) -> None:
    study = study_with_incumbent(ReachPruner())
    assert run(study, [0.30] * 10, [0.30] * 10, unfreeze=unfreeze)[0] == first


def test_the_budget_sets_the_epochs_left_and_the_last_epoch_is_never_judged() -> None:
    values, train = [0.30, 0.40, 0.50, 0.60], [0.4, 0.5, 0.6, 0.7]  # +0.10 per epoch
    # A 10-epoch budget: 0.50 + 0.025 + 0.1 x 7 at epoch 2 reaches the incumbent. A 4-epoch one
    # does not (0.50 + 0.025 + 0.1 x 1), and its last epoch is never judged.
    assert run(study_with_incumbent(ReachPruner()), values, train, budget=10) == (None, None)
    assert run(study_with_incumbent(ReachPruner(), budget=4), values, train, budget=4)[0] == 1
    study = study_with_incumbent(ReachPruner(), budget=4)
    assert run(study, [0.30, 0.80, 0.80, 0.10], [0.4, 0.9, 0.9, 0.9], budget=4)[0] is None


def test_no_incumbent_no_prune_and_startup_trials_wait() -> None:
    study = optuna.create_study(direction="maximize", pruner=ReachPruner(n_startup_trials=2))
    assert run(study, [0.3] * 10) == (None, None)  # no completed trial yet
    assert run(study, [0.2] * 10) == (None, None)  # one completed trial, two needed
    assert run(study, [0.1] * 10)[0] == 1


def test_behind_the_collapse_rule_the_reason_is_the_reach_reason() -> None:
    study = study_with_incumbent(CollapsePruner(inner=ReachPruner()))
    pruned_at, reason = run(study, [0.50] * 10, [0.6] * 10)
    assert pruned_at == 1 and reason is not None and reason.startswith("reach: at most 0.53 by epoch 9")


def test_reach_arithmetic_skips_nan_and_never_counts_a_drop() -> None:
    r = reach({0: 0.3, 1: math.nan, 2: 0.5, 3: 0.4}, {1: 0.5, 3: 0.6}, 3, 4, window=2, optimism=1.0,
              tolerance=0.025)
    assert (r.best, r.best_epoch, r.since) == (0.5, 2, 1)
    assert r.validation_rate == pytest.approx(0.1)  # best 0.3 by epoch 1, 0.5 by epoch 3
    assert r.training_rate == pytest.approx(0.05)
    assert r.value == pytest.approx(0.5 + 0.025 + 0.1 * 4)


@pytest.mark.parametrize("kwargs", [{"window": 0}, {"optimism": 0.0}, {"tolerance_volumes": -1.0},
                                    {"n_startup_trials": 0}, {"settle_epochs": -1}])
def test_bad_options_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ReachPruner(**kwargs)  # type: ignore[arg-type]
