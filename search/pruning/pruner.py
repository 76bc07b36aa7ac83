"""Collapse-aware pruning: stop a trial whose validation predictions sit in one class.

Median and percentile pruners compare a trial with *completed* trials, so they wait for
startup trials and, when most trials collapse, compare a collapsed trial with a collapsed
median and never fire (measured here: Optuna 5.0's ``MedianPruner`` keeps a trial reporting
0.25 at every epoch when six completed trials also reported 0.25). :class:`CollapsePruner`
instead judges a trial by its own per-epoch record, from the first trial of a study, with the
rule of :mod:`search.pruning.collapse`, and wraps an optional inner pruner for trials that learn
but not well enough: by default the reach rule (:mod:`search.pruning.reach`: "can it still reach
the best completed trial?"), or one of Optuna's ("is it worse than the others now?").

The per-epoch evidence is what :mod:`search.trial.reporter` stores for every epoch (see
:mod:`search.contract`): the trial's intermediate value (the objective) plus the trainer's
metrics dict of the epoch. The trial's ``unfreeze_at_epoch`` (``-1``: the encoder is never
unfrozen) moves the grace period of the post-warm-up criterion and of the inner pruner.

A pruner that can say why it prunes is an :class:`ExplainingPruner`: its ``judge`` returns the
reason or ``None``, and its ``prune`` is ``judge(...) is not None``, so the decision and its
reason come from one calculation. :func:`prune_reason` asks any pruner, and is what the
reporter calls each epoch. :func:`prune_kind` tells from a reason which rule pruned: the collapse
rule, the inner rule, or neither (training diverged); the worker stores it with the reason.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
)
from optuna.study import StudyDirection

from search.contract import epoch_metrics, unfreeze_at_epoch
from search.pruning.collapse import (
    COLLAPSED,
    STUCK,
    EpochEvidence,
    Thresholds,
    collapse_reason,
    effective_grace,
    stuck_reason,
)
from search.ranking import best_step

if TYPE_CHECKING:
    import optuna


# What pruned a trial (its stored ``prune_kind``): the collapse rule (stuck or collapsed), the
# inner rule (reach, median, ...), or a diverged loss (the trial process's DivergedError, whose
# reason starts with this kind).
COLLAPSE_KIND, INNER_KIND, DIVERGED_KIND = "collapse", "inner", "diverged"


def prune_kind(reason: str) -> str:
    """Which rule gave ``reason``: :data:`COLLAPSE_KIND` for the collapse rule's reasons (they start
    ``stuck:`` or ``collapsed:``), :data:`DIVERGED_KIND` for a diverged loss, :data:`INNER_KIND`
    for everything else: the inner pruner's reasons (``reach: ...``, ``median: ...``)."""
    head = reason.partition(":")[0].strip()
    if head in (STUCK, COLLAPSED):
        return COLLAPSE_KIND
    return DIVERGED_KIND if head == DIVERGED_KIND else INNER_KIND


def trial_evidence(trial: optuna.trial.FrozenTrial) -> list[EpochEvidence]:
    """The evidence of every epoch the trial has reported an intermediate value for."""
    return [EpochEvidence.from_metrics(step, epoch_metrics(trial, step))
            for step in sorted(trial.intermediate_values)]


@runtime_checkable
class ExplainingPruner(Protocol):
    """A pruner that says why it prunes: ``prune(study, trial)`` is ``judge(...) is not None``."""

    def judge(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str | None:
        """The reason to prune ``trial`` now, or ``None`` to let it go on."""
        ...


def prune_reason(pruner: BasePruner, study: optuna.Study,
                 trial: optuna.trial.FrozenTrial) -> str | None:
    """Why ``pruner`` prunes ``trial`` now, or ``None`` to let it go on; one decision each call.

    An :class:`ExplainingPruner` gives its own reason; for any other pruner the reason says
    what it decided (:func:`describe_prune`).
    """
    if isinstance(pruner, ExplainingPruner):
        return pruner.judge(study, trial)
    if pruner.prune(study, trial):
        return describe_prune(pruner, study, trial)
    return None


def describe_prune(pruner: BasePruner, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str:
    """One line saying what one of Optuna's pruners decided when it pruned ``trial``.

    It names only the value the pruner compared, not the threshold it compared it with: a
    median or percentile pruner compares the trial's best value so far (NaN skipped) with the
    completed trials at the same epoch; successive halving and Hyperband compare the value of
    the current epoch with the trials of its rung.
    """
    step = trial.last_step
    values = trial.intermediate_values
    if isinstance(pruner, PercentilePruner):
        name = "median" if isinstance(pruner, MedianPruner) else "percentile"
        best, _ = best_step(values, study.direction == StudyDirection.MAXIMIZE)
        if math.isnan(best):
            return f"{name}: every value so far is NaN at epoch {step}"
        kept = "the median" if name == "median" else "the kept percentile"
        return f"{name}: best {best:.2f} is worse than {kept} of completed trials at epoch {step}"
    if isinstance(pruner, (HyperbandPruner, SuccessiveHalvingPruner)):
        name = "hyperband" if isinstance(pruner, HyperbandPruner) else "successive halving"
        value = values[step] if step is not None else math.nan
        return f"{name}: {value:.2f} not promoted to the next rung at epoch {step}"
    return f"{type(pruner).__name__}: pruned at epoch {step}"


class CollapsePruner(BasePruner):
    """Prune collapsed trials from trial 1; optionally also whatever ``inner`` prunes.

    Each epoch, in this order (:mod:`search.pruning.collapse` has the rule and why it is so):

    1. from epoch 0, frozen warm-up included: prune a trial *stuck* in a collapse for
       ``stuck_patience`` epochs (collapsed validation predictions that do not move, with a
       training balanced accuracy at chance and a validation loss no better than the prior's);
    2. from the trial's effective grace epoch (:func:`~search.pruning.collapse.effective_grace`: after
       the frozen warm-up and ``settle_epochs`` more) on: prune a trial *collapsed* for
       ``patience`` epochs (moving or not);
    3. after the same grace epoch: prune what ``inner.prune`` prunes, so the inner pruner never
       compares a trial still warming up with trials that unfroze earlier.

    NaN handling: NaN metrics are never evidence of collapse, a NaN training accuracy is no
    evidence of learning (:mod:`search.pruning.collapse`); NaN intermediate values are passed to the
    inner pruner unchanged (Optuna's median and percentile pruners prune a trial whose values
    are all NaN).

    It is an :class:`ExplainingPruner`: :meth:`judge` returns the reason of a prune (the
    inner pruner's through :func:`prune_reason`), and :meth:`prune` is ``judge`` answered.

    Args:
        max_class_share: Share of validation predictions in one class, in ``(0, 1]``, at or
            above which an epoch counts as collapsed.
        margin: An epoch with balanced accuracy at most ``1/C + margin`` counts as collapsed.
        patience: Consecutive collapsed epochs after the grace epoch needed to prune, >= 1.
        grace_epochs: Criterion 2 and the inner pruner never judge epochs ``0 .. grace_epochs-1``.
        settle_epochs: Nor the epochs from the unfreeze on that are fewer than this many.
        train_margin: Training balanced accuracy above ``1/C + train_margin`` is learning: such
            an epoch never counts as collapsed. ``1.0`` turns this evidence off.
        loss_margin: A validation loss below ``1 - loss_margin`` times the class prior's loss is
            learning too. ``1.0`` turns this evidence off.
        stuck_patience: Consecutive stuck epochs needed to prune in criterion 1; ``0`` turns it off.
        max_prediction_change: Largest share of validation predictions that may change class
            between two epochs that still count as stuck, in ``[0, 1]``.
        inner: A pruner consulted after the grace period (:class:`~search.pruning.reach.ReachPruner`
            or one of Optuna's), or ``None``.
    """

    def __init__(
        self,
        max_class_share: float = 0.9,
        margin: float = 0.05,
        patience: int = 2,
        grace_epochs: int = 1,
        settle_epochs: int = 2,
        train_margin: float = 0.05,
        loss_margin: float = 0.1,
        stuck_patience: int = 3,
        max_prediction_change: float = 0.01,
        *,
        inner: BasePruner | None = None,
    ) -> None:
        if not 0.0 < max_class_share <= 1.0:
            raise ValueError(f"max_class_share must be in (0, 1], but got {max_class_share=}.")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), but got {margin=}.")
        if patience < 1:
            raise ValueError(f"patience must be at least 1, but got {patience=}.")
        if grace_epochs < 0:
            raise ValueError(f"grace_epochs cannot be negative, but got {grace_epochs=}.")
        if settle_epochs < 0:
            raise ValueError(f"settle_epochs cannot be negative, but got {settle_epochs=}.")
        if not 0.0 <= train_margin <= 1.0:
            raise ValueError(f"train_margin must be in [0, 1], but got {train_margin=}.")
        if not 0.0 <= loss_margin <= 1.0:
            raise ValueError(f"loss_margin must be in [0, 1], but got {loss_margin=}.")
        if stuck_patience < 0:
            raise ValueError(f"stuck_patience cannot be negative, but got {stuck_patience=}.")
        if not 0.0 <= max_prediction_change <= 1.0:
            raise ValueError(f"max_prediction_change must be in [0, 1], but got {max_prediction_change=}.")
        self._thresholds = Thresholds(max_class_share, margin, train_margin, loss_margin,
                                      max_prediction_change)
        self._patience = patience
        self._grace_epochs = grace_epochs
        self._settle_epochs = settle_epochs
        self._stuck_patience = stuck_patience
        self._inner = inner

    def judge(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str | None:
        """The reason to prune ``trial`` now, or ``None`` to let it go on."""
        step = trial.last_step
        if step is None:
            return None
        evidence = trial_evidence(trial)
        if self._stuck_patience:
            reason = stuck_reason(evidence, self._thresholds, self._stuck_patience)
            if reason is not None:
                return reason
        grace = effective_grace(self._grace_epochs, unfreeze_at_epoch(trial), self._settle_epochs)
        if step < grace:
            return None
        reason = collapse_reason(evidence, self._thresholds, self._patience, grace)
        if reason is not None:
            return reason
        if self._inner is not None:
            return prune_reason(self._inner, study, trial)
        return None

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return self.judge(study, trial) is not None
