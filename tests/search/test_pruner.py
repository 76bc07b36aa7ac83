"""CollapsePruner through Optuna's public loop: ask, report, should_prune.

Each epoch a test stores the per-epoch metrics the way the reporter does
(:func:`search.contract.write_epoch`) and reports the objective, then asks ``trial.should_prune()``; on a prune, the
reason is what :func:`search.pruning.pruner.prune_reason` gives for the same trial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
import pytest

from search.contract import UNFREEZE_ATTR, write_epoch
from search.pruning.pruner import CollapsePruner, prune_kind, prune_reason

optuna.logging.set_verbosity(optuna.logging.WARNING)

NAN = math.nan
COLLAPSED = {"share": 0.97, "bacc": 0.25}  # the collapsed baseline: 97% class 0, chance level
HEALTHY = {"share": 0.40, "bacc": 0.60}


def metrics(e: dict[str, Any], classes: int = 4) -> dict[str, Any]:
    """A trainer metrics record: ``share``/``bacc`` of validation, optionally ``train`` (training
    balanced accuracy; absent: not recorded), ``hist`` (validation predictions per class;
    absent: 100 predictions, ``share`` of them in class ``majority`` and the rest in the next)."""
    share, majority = e["share"], e.get("majority", 0)
    hist = e.get("hist")
    if hist is None:
        top = 100 if math.isnan(share) else round(share * 100)
        hist = [0] * classes
        hist[majority] = top
        hist[(majority + 1) % classes] += 100 - top
    out = {"val/max_class_share": share, "val/balanced_accuracy": e["bacc"],
           "val/majority_class": majority, "val/pred_hist": hist}
    if "train" in e:
        out["train/balanced_accuracy"] = e["train"]
    if "loss" in e:  # validation loss, on a validation set of the 70/10/10/10 phantoms' prior
        out["val/loss"] = e["loss"]
        out["val/confusion"] = [[74, 0, 0, 0], [11, 0, 0, 0], [11, 0, 0, 0], [10, 0, 0, 0]]
    return out


def after_grace(**kwargs: Any) -> CollapsePruner:
    """Only the criterion judged after the grace epoch (and the inner pruner): no stuck rule."""
    return CollapsePruner(stuck_patience=0, **kwargs)


def make_study(pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    # A fixed name: Hyperband assigns brackets from a hash of the study name.
    return optuna.create_study(direction="maximize", pruner=pruner or CollapsePruner(),
                               study_name="pruner-test")


def run_trial(study: optuna.Study, epochs: Sequence[dict[str, float]], *,
              unfreeze: int = -1) -> int | None:
    """Report ``epochs`` into a new trial; the epoch it was pruned at, or None (then complete)."""
    return run_and_explain(study, epochs, unfreeze=unfreeze, explain=False)[0]


def run_and_explain(study: optuna.Study, epochs: Sequence[dict[str, float]], *,
                    unfreeze: int = -1, explain: bool = True,
                    legacy: bool = False) -> tuple[int | None, str | None]:
    """Report ``epochs`` into a new trial: (the epoch it was pruned at, why), or (None, None)
    when it completed. Each epoch asks ``trial.should_prune()``, or with ``explain`` what the
    reporter asks instead, :func:`prune_reason` (once: Optuna's successive halving records a
    rung each time it is asked). ``legacy``: records stored as earlier versions stored them."""
    trial = study.ask()
    trial.set_user_attr(UNFREEZE_ATTR, unfreeze)
    for epoch, e in enumerate(epochs):
        if legacy:
            trial.set_user_attr(f"epoch_{epoch:03d}", metrics(e))
        else:
            write_epoch(trial, epoch, metrics(e))
        trial.report(e["bacc"], epoch)
        if explain:
            (stored,) = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            reason = prune_reason(study.pruner, study, stored)
        else:
            reason = "should_prune" if trial.should_prune() else None
        if reason is not None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return epoch, reason
    study.tell(trial, epochs[-1]["bacc"])
    return None, None


@pytest.mark.parametrize(
    ("share", "bacc", "pruned_at"),
    [
        (0.97, 0.60, 2),  # collapsed by share alone (not a real pair: tests the criteria apart)
        (0.90, 0.60, 2),  # the threshold is inclusive
        (0.89, 0.60, None),
        (0.50, 0.25, 2),  # collapsed by balanced accuracy alone: chance 0.25
        (0.50, 0.30, 2),  # 1/C + margin 0.05, inclusive
        (0.50, 0.31, None),
        (0.97, 0.25, 2),  # both
    ],
)
def test_collapse_by_share_or_balanced_accuracy(share: float, bacc: float,
                                                pruned_at: int | None) -> None:
    study = make_study(after_grace(patience=2, grace_epochs=1))
    assert run_trial(study, [{"share": share, "bacc": bacc}] * 6) == pruned_at


@pytest.mark.parametrize(
    ("epochs", "reason"),
    [
        ([COLLAPSED] * 3, "collapsed: 97% of validation predictions are class 0 for 2 epochs (epochs 1-2)"),
        ([{"share": 0.5, "bacc": 0.27}] * 3,
         "collapsed: balanced accuracy 0.27 <= chance 0.25 + margin 0.05 for 2 epochs (epochs 1-2)"),
        ([{"share": 0.97, "bacc": 0.6}] * 2 + [{"share": 0.5, "bacc": 0.27}],
         "collapsed: one class or chance level (epoch 1: 97% class 0; epoch 2: balanced accuracy 0.27) "
         "for 2 epochs (epochs 1-2)"),
        ([{**COLLAPSED, "train": 0.26}] * 3,
         "collapsed: 97% of validation predictions are class 0 for 2 epochs (epochs 1-2); "
         "training balanced accuracy <= 0.26 (chance 0.25)"),
    ],
)
def test_prune_reason_says_which_criterion_held(epochs: list[dict[str, float]], reason: str) -> None:
    study = make_study(after_grace(patience=2, grace_epochs=1))
    assert run_and_explain(study, epochs) == (2, reason)


@pytest.mark.parametrize(("patience", "pruned_at"), [(1, 1), (2, 2), (3, 3), (5, 5)])
def test_patience_counts_consecutive_collapsed_epochs(patience: int, pruned_at: int) -> None:
    study = make_study(after_grace(patience=patience, grace_epochs=1))
    assert run_trial(study, [COLLAPSED] * 8) == pruned_at


def test_a_recovered_epoch_restarts_the_count() -> None:
    study = make_study(after_grace(patience=2, grace_epochs=1))
    epochs = [COLLAPSED, COLLAPSED, HEALTHY, COLLAPSED, COLLAPSED, HEALTHY]
    assert run_trial(study, epochs) == 4


@pytest.mark.parametrize(
    ("grace_epochs", "unfreeze", "settle", "pruned_at"),
    [
        (0, -1, 2, 1),  # never unfrozen: only grace_epochs counts
        (1, -1, 2, 2),
        (3, -1, 2, 4),
        (1, 3, 2, 6),  # frozen epochs 0-2, unfrozen epoch 3, the next one 4: first judged 5
        (1, 1, 2, 4),
        (5, 1, 2, 6),  # grace_epochs beyond the settle period wins
        (1, 3, 0, 4),  # settle_epochs=0: judged from the unfreeze epoch on
    ],
)
def test_grace_covers_frozen_warmup_and_settling(grace_epochs: int, unfreeze: int, settle: int,
                                                 pruned_at: int) -> None:
    study = make_study(after_grace(patience=2, grace_epochs=grace_epochs, settle_epochs=settle))
    assert run_trial(study, [COLLAPSED] * 10, unfreeze=unfreeze) == pruned_at


def moving(n: int, share: float = 0.97, bacc: float = 0.25, step: int = 3) -> list[dict[str, Any]]:
    """Collapsed epochs whose predictions move: ``step`` of 100 change class every epoch."""
    out = []
    for k in range(n):
        top = round(share * 100) - (k % 2) * step
        out.append({"share": top / 100, "bacc": bacc, "hist": [top, 100 - top, 0, 0]})
    return out


@pytest.mark.parametrize("unfreeze", [1, 2, 3, 4, 5])
def test_defaults_never_prune_a_moving_collapse_in_warmup_or_the_epoch_after_unfreezing(unfreeze: int) -> None:
    study = make_study(CollapsePruner())
    pruned_at = run_trial(study, moving(12), unfreeze=unfreeze)
    assert pruned_at is not None and pruned_at > unfreeze + 1


@pytest.mark.parametrize("unfreeze", [-1, 1, 3, 5, 8])
def test_defaults_stop_a_stuck_collapse_at_epoch_2_however_late_it_unfreezes(unfreeze: int) -> None:
    """The demo's late-unfreeze baseline: class 0 for every prediction, training at chance."""
    study = make_study(CollapsePruner())
    stuck = {"share": 1.0, "bacc": 0.25, "train": 0.25}
    assert run_and_explain(study, [stuck] * 10, unfreeze=unfreeze) == (
        2, "stuck: 100% of validation predictions are class 0, unchanged for 3 epochs (epochs 0-2); "
           "training balanced accuracy <= 0.25 (chance 0.25)")


@pytest.mark.parametrize("explain", [True, False])
def test_a_trial_stored_by_an_earlier_version_is_judged_the_same(explain: bool) -> None:
    """Epoch records as user attributes ``epoch_NNN`` (before they moved to system attributes)."""
    stuck = [{"share": 1.0, "bacc": 0.25, "train": 0.25}] * 5
    decisions = [run_and_explain(make_study(CollapsePruner()), stuck, explain=explain, legacy=legacy)
                 for legacy in (False, True)]
    assert decisions[0] == decisions[1] and decisions[0][0] == 2


def test_a_swing_to_a_minority_class_in_warmup_that_then_learns_is_not_pruned() -> None:
    """The fixed recipe under class weights: all class 2, then 91% class 2, while training
    balanced accuracy leaves chance; validation learns once the encoder trains."""
    swing = [
        {"share": 1.00, "bacc": 0.25, "majority": 2, "hist": [0, 0, 106, 0], "train": 0.30},
        {"share": 0.91, "bacc": 0.40, "majority": 2, "hist": [0, 8, 96, 2], "train": 0.40},
        {"share": 0.41, "bacc": 0.58, "majority": 1, "hist": [33, 43, 1, 29], "train": 0.51},
        {"share": 0.63, "bacc": 0.69, "hist": [67, 26, 7, 6], "train": 0.57},
    ] + [{"share": 0.7, "bacc": 0.85, "hist": [74, 10, 11, 11], "train": 0.7}] * 6
    study = make_study(CollapsePruner(inner=optuna.pruners.MedianPruner(n_startup_trials=5)))
    assert run_trial(study, swing, unfreeze=3) is None


def test_a_frozen_majority_collapse_whose_predictions_start_to_move_is_kept() -> None:
    """Recorded: all class 0 for the first two frozen epochs, then a few predictions move; the
    trial learned to 0.95 after its encoder unfroze at epoch 3."""
    recovers = [
        {"share": 1.00, "bacc": 0.25, "hist": [106, 0, 0, 0], "train": 0.26},
        {"share": 1.00, "bacc": 0.25, "hist": [106, 0, 0, 0], "train": 0.27},
        {"share": 0.97, "bacc": 0.30, "hist": [103, 3, 0, 0], "train": 0.25},
        {"share": 0.99, "bacc": 0.25, "hist": [105, 0, 1, 0], "train": 0.34},
        {"share": 0.84, "bacc": 0.68, "hist": [89, 2, 5, 10], "train": 0.55},
    ] + [{"share": 0.74, "bacc": 0.95, "hist": [78, 8, 10, 10], "train": 0.95}] * 5
    study = make_study(CollapsePruner())
    assert run_trial(study, recovers, unfreeze=3) is None


def test_an_almost_still_collapse_whose_loss_beats_the_prior_is_kept() -> None:
    """Recorded: all class 0 for two epochs, then one prediction of 106 moves, training accuracy at
    chance, but the validation loss is well below the class prior's (0.91): it learned to 0.79."""
    slow = [
        {"share": 1.00, "bacc": 0.25, "hist": [106, 0, 0, 0], "train": 0.25, "loss": 0.89},
        {"share": 1.00, "bacc": 0.25, "hist": [106, 0, 0, 0], "train": 0.25, "loss": 0.96},
        {"share": 0.99, "bacc": 0.28, "hist": [105, 1, 0, 0], "train": 0.26, "loss": 0.78},
        {"share": 0.86, "bacc": 0.42, "hist": [91, 14, 1, 0], "train": 0.35, "loss": 0.73},
    ] + [{"share": 0.76, "bacc": 0.79, "hist": [81, 8, 10, 7], "train": 0.44, "loss": 0.69}] * 6
    assert run_trial(make_study(CollapsePruner()), slow, unfreeze=1) is None
    # The same record with a loss at the prior's is stuck by epoch 2.
    still = [{**e, "loss": 0.95} for e in slow]
    assert run_trial(make_study(CollapsePruner()), still, unfreeze=1) == 2


@pytest.mark.parametrize(("train", "pruned_at"), [(0.25, 2), (0.30, 2), (0.31, None), (0.6, None), (NAN, 2)])
def test_a_model_that_learns_its_training_data_is_not_collapsed(train: float, pruned_at: int | None) -> None:
    """Training balanced accuracy above chance + train_margin (0.05) vetoes both criteria; an
    unrecorded one (NaN) is no evidence of learning."""
    study = make_study(CollapsePruner())
    assert run_trial(study, [{**COLLAPSED, "train": train}] * 8) == pruned_at


@pytest.mark.parametrize(("change", "pruned_at"), [(0, 2), (1, 2), (2, None)])
def test_stuck_means_at_most_max_prediction_change_of_predictions_moved(change: int, pruned_at: int | None) -> None:
    """100 predictions, max_prediction_change 0.01: one prediction moving each epoch is still stuck."""
    epochs = [{"share": 0.97, "bacc": 0.25, "hist": [97 - (k % 2) * change, 3 + (k % 2) * change, 0, 0]}
              for k in range(6)]
    study = make_study(CollapsePruner(stuck_patience=3, patience=99))
    assert run_trial(study, epochs, unfreeze=4) == pruned_at


@pytest.mark.parametrize(("stuck_patience", "pruned_at"), [(1, 0), (2, 1), (3, 2), (5, 4), (0, None)])
def test_stuck_patience_counts_stuck_epochs_from_epoch_0(stuck_patience: int, pruned_at: int | None) -> None:
    study = make_study(CollapsePruner(stuck_patience=stuck_patience))
    assert run_trial(study, [COLLAPSED] * 8, unfreeze=7) == pruned_at


def test_needs_no_completed_trial() -> None:
    study = make_study(CollapsePruner())
    assert run_trial(study, [COLLAPSED] * 5) == 2  # the very first trial of the study
    assert not study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def test_median_pruner_never_prunes_when_completed_trials_collapsed_too() -> None:
    """DESIGN.md's measured fact, and what the collapse pruner does about it."""
    median = make_study(optuna.pruners.MedianPruner(n_startup_trials=5))
    for _ in range(6):
        assert run_trial(median, [COLLAPSED] * 6) is None
    assert run_trial(median, [COLLAPSED] * 6) is None

    collapse = make_study(CollapsePruner(inner=optuna.pruners.MedianPruner(n_startup_trials=5)))
    assert run_trial(collapse, [COLLAPSED] * 6) == 2


@pytest.mark.parametrize(
    ("values", "share", "bacc", "pruned_at"),
    [
        ([NAN] * 5, NAN, NAN, None),  # no evidence at all: never a collapse
        ([0.25] * 5, NAN, 0.25, 2),  # NaN share: balanced accuracy still decides
        ([0.6] * 5, 0.97, NAN, 2),  # NaN balanced accuracy: the share still decides
        ([0.6] * 5, NAN, 0.6, None),
    ],
)
def test_nan_metrics_are_no_evidence_of_collapse(values: list[float], share: float, bacc: float,
                                                 pruned_at: int | None) -> None:
    study = make_study(after_grace(patience=2, grace_epochs=1))
    trial = study.ask()
    result = None
    for epoch, v in enumerate(values):
        write_epoch(trial, epoch, metrics({"share": share, "bacc": bacc}))
        trial.report(v, epoch)
        if trial.should_prune():
            result = epoch
            break
    assert result == pruned_at


def test_a_nan_epoch_breaks_the_run() -> None:
    study = make_study(after_grace(patience=2, grace_epochs=1))
    epochs = [COLLAPSED, COLLAPSED, {"share": NAN, "bacc": NAN}, COLLAPSED, COLLAPSED]
    assert run_trial(study, epochs) == 4


def test_epochs_without_stored_metrics_are_not_judged() -> None:
    study = make_study(after_grace(patience=1, grace_epochs=0))
    trial = study.ask()
    for epoch in range(4):
        trial.report(0.25, epoch)
        assert not trial.should_prune()


INNERS: list[tuple[str, optuna.pruners.BasePruner | None, str | None]] = [
    ("none", None, None),
    ("median", optuna.pruners.MedianPruner(n_startup_trials=2),
     "median: best 0.31 is worse than the median of completed trials at epoch 2"),
    ("percentile", optuna.pruners.PercentilePruner(25.0, n_startup_trials=2),
     "percentile: best 0.31 is worse than the kept percentile of completed trials at epoch 2"),
    ("successive_halving",
     optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2),
     "successive halving: 0.31 not promoted to the next rung at epoch"),
    ("hyperband", optuna.pruners.HyperbandPruner(min_resource=1, max_resource=6,
                                                 reduction_factor=2),
     "hyperband: 0.31 not promoted to the next rung at epoch"),
]


@pytest.mark.parametrize(("name", "inner", "reason"), INNERS, ids=[i[0] for i in INNERS])
def test_inner_pruner_prunes_a_worse_healthy_trial(
    name: str, inner: optuna.pruners.BasePruner | None, reason: str | None
) -> None:
    study = make_study(after_grace(patience=2, grace_epochs=2, inner=inner))
    for _ in range(8):  # hyperband spreads them over its brackets
        assert run_trial(study, [HEALTHY] * 6) is None
    # Not collapsed (share 0.4, bacc 0.31 > 0.30), just worse than the others.
    pruned_at, why = run_and_explain(study, [{"share": 0.4, "bacc": 0.31}] * 6)
    if reason is None:
        assert pruned_at is None
        return
    assert pruned_at is not None and pruned_at >= 2  # never inside the grace period
    assert why is not None and why.startswith(reason)


@pytest.mark.parametrize(("name", "inner", "reason"), INNERS, ids=[i[0] for i in INNERS])
def test_collapse_prunes_whatever_the_inner_pruner(
    name: str, inner: optuna.pruners.BasePruner | None, reason: str | None
) -> None:
    study = make_study(after_grace(patience=2, grace_epochs=1, inner=inner))
    pruned_at, why = run_and_explain(study, [COLLAPSED] * 6)
    assert pruned_at == 2 and why is not None and why.startswith("collapsed: 97%")


def test_inner_pruner_is_not_consulted_during_warmup() -> None:
    pruner = CollapsePruner(grace_epochs=1, inner=optuna.pruners.MedianPruner(n_startup_trials=1))
    study = make_study(pruner)
    assert run_trial(study, [HEALTHY] * 8) is None
    # Far below the median from epoch 0, but frozen until epoch 4: judged from epoch 6 on.
    assert run_trial(study, [{"share": 0.4, "bacc": 0.35}] * 8, unfreeze=4) == 6


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_class_share": 0.0}, "max_class_share=0.0"),
        ({"max_class_share": 1.5}, "max_class_share=1.5"),
        ({"margin": -0.1}, "margin=-0.1"),
        ({"patience": 0}, "patience=0"),
        ({"grace_epochs": -1}, "grace_epochs=-1"),
        ({"settle_epochs": -2}, "settle_epochs=-2"),
        ({"train_margin": 1.5}, "train_margin=1.5"),
        ({"stuck_patience": -1}, "stuck_patience=-1"),
        ({"loss_margin": 2.0}, "loss_margin=2.0"),
        ({"max_prediction_change": -0.1}, "max_prediction_change=-0.1"),
    ],
)
def test_invalid_arguments_quote_the_value(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CollapsePruner(**kwargs)


@pytest.mark.parametrize(("reason", "kind"), [
    ("stuck: 100% of validation predictions are class 0, unchanged for 3 epochs (epochs 0-2)", "collapse"),
    ("collapsed: balanced accuracy 0.25 <= chance 0.25 + margin 0.05 for 2 epochs (epochs 3-4)", "collapse"),
    ("reach: at most 0.61 by epoch 9 (best 0.48 at epoch 3, ...), below the incumbent 0.80 (trial 2)", "inner"),
    ("median: best 0.30 is worse than the median of completed trials at epoch 4", "inner"),
    ("successive halving: 0.30 not promoted to the next rung at epoch 1", "inner"),
    ("diverged: training diverged: loss is nan in epoch 1", "diverged"),
    ("", "inner"),
])
def test_prune_kind_says_which_rule_gave_a_reason(reason: str, kind: str) -> None:
    assert prune_kind(reason) == kind
