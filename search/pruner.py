"""Collapse-aware pruning: stop a trial whose validation predictions sit in one class.

Median and percentile pruners compare a trial with *completed* trials, so they wait for
startup trials and, when most trials collapse, compare a collapsed trial with a collapsed
median and never fire (measured here: Optuna 5.0's ``MedianPruner`` keeps a trial reporting
0.25 at every epoch when six completed trials also reported 0.25). :class:`CollapsePruner`
instead judges a trial by its own validation predictions, from the first trial of a study,
and wraps an optional inner Optuna pruner for the usual "worse than the others" rule.

The per-epoch evidence is what :mod:`search.reporter` stores for every epoch (see
:mod:`search.record`): the trial's intermediate value (the objective) plus the trainer's
metrics dict of the epoch, of which the rule reads ``val/max_class_share``,
``val/majority_class``, ``val/balanced_accuracy`` and the number of classes
(``len(val/pred_hist)``). The trial's ``unfreeze_at_epoch`` (``-1``: the encoder is never
unfrozen) moves the grace period past a frozen warm-up.

The rule itself (:func:`collapse_reason`) and the grace period (:func:`effective_grace`) are
pure functions. A pruner that can say why it prunes is an :class:`ExplainingPruner`: its
``judge`` returns the reason or ``None``, and its ``prune`` is ``judge(...) is not None``, so the
decision and its reason come from one calculation. :func:`prune_reason` asks any pruner, and
is what the reporter calls each epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from optuna.pruners import (
    BasePruner,
    HyperbandPruner,
    MedianPruner,
    PercentilePruner,
    SuccessiveHalvingPruner,
)
from optuna.study import StudyDirection

from search.record import best_step, epoch_metrics, unfreeze_at_epoch

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class EpochEvidence:
    """What the collapse rule sees of one validation. NaN where the trainer gave none."""

    epoch: int
    max_class_share: float = math.nan  # largest share of predictions in one class, in [0, 1]
    majority_class: int = -1  # the class with that share
    balanced_accuracy: float = math.nan
    num_classes: int = 0  # 0: unknown, so the balanced-accuracy criterion is skipped

    @classmethod
    def from_metrics(cls, epoch: int, metrics: Mapping[str, Any] | None) -> EpochEvidence:
        """Evidence from a trainer metrics dict (``None`` values, as stored for NaN, are NaN)."""
        metrics = metrics or {}
        hist = metrics.get("val/pred_hist") or metrics.get("val/per_class_accuracy") or []
        majority = metrics.get("val/majority_class")
        return cls(
            epoch=epoch,
            max_class_share=_float(metrics.get("val/max_class_share")),
            majority_class=int(majority) if isinstance(majority, int) else -1,
            balanced_accuracy=_float(metrics.get("val/balanced_accuracy")),
            num_classes=len(hist),
        )


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def effective_grace(grace_epochs: int, unfreeze_at_epoch: int, settle_epochs: int) -> int:
    """First epoch the collapse rule may judge.

    A trial that unfreezes its encoder at epoch ``u`` (0-based; ``-1``: never) is not judged
    during its frozen warm-up nor for ``settle_epochs`` epochs from the unfreeze on: a frozen
    linear head often predicts the majority class until the encoder trains. With the default
    ``settle_epochs=2`` epochs ``0 .. u+1`` are never judged.
    """
    if unfreeze_at_epoch >= 0:
        return max(grace_epochs, unfreeze_at_epoch + settle_epochs)
    return grace_epochs


def _collapsed_by_share(e: EpochEvidence, max_class_share: float) -> bool:
    return e.max_class_share >= max_class_share  # False for NaN


def _collapsed_by_balanced_accuracy(e: EpochEvidence, margin: float) -> bool:
    return e.num_classes > 0 and e.balanced_accuracy <= 1.0 / e.num_classes + margin


def collapse_reason(
    epochs: Sequence[EpochEvidence],
    *,
    max_class_share: float = 0.9,
    margin: float = 0.05,
    patience: int = 2,
    grace: int = 1,
) -> str | None:
    """Why the trial has collapsed, or ``None`` if it has not.

    A trial has collapsed when each of its last ``patience`` epochs, consecutive and all at
    or after epoch ``grace``, shows one of: at least ``max_class_share`` of the validation
    predictions in one class, or balanced accuracy at most ``1/C + margin`` (chance plus a
    margin, ``C`` classes). Only the latest epochs count: a trial that recovers is judged
    anew. A NaN share or balanced accuracy is no evidence of collapse, so an epoch with NaN
    metrics breaks the run of collapsed epochs; an epoch with no stored metrics does too.
    """
    run: list[EpochEvidence] = []
    for e in sorted(epochs, key=lambda e: e.epoch, reverse=True):
        if len(run) == patience:
            break
        contiguous = not run or e.epoch == run[-1].epoch - 1
        by_share = _collapsed_by_share(e, max_class_share)
        by_bacc = _collapsed_by_balanced_accuracy(e, margin)
        if e.epoch < grace or not contiguous or not (by_share or by_bacc):
            break
        run.append(e)
    if len(run) < patience:
        return None
    return _describe_collapse(run, max_class_share, margin)


def _describe_collapse(run: Sequence[EpochEvidence], max_class_share: float, margin: float) -> str:
    n = len(run)
    span = f"for {n} epoch{'s' if n != 1 else ''}"
    if all(_collapsed_by_share(e, max_class_share) for e in run):
        share = min(e.max_class_share for e in run)
        classes = sorted({e.majority_class for e in run})
        which = (f"class {classes[0]}" if len(classes) == 1
                 else f"one class ({', '.join(map(str, classes))})")
        percent = math.floor(share * 100)
        return f"collapsed: {percent}% of validation predictions are {which} {span}"
    if all(_collapsed_by_balanced_accuracy(e, margin) for e in run):
        bacc = max(e.balanced_accuracy for e in run)
        chance = 1.0 / run[0].num_classes
        return (f"collapsed: balanced accuracy {bacc:.2f} <= chance {chance:.2f} + margin "
                f"{margin:.2f} {span}")
    parts = []
    for e in sorted(run, key=lambda e: e.epoch):
        if _collapsed_by_share(e, max_class_share):
            parts.append(f"epoch {e.epoch}: {math.floor(e.max_class_share * 100):.0f}% class "
                         f"{e.majority_class}")
        else:
            parts.append(f"epoch {e.epoch}: balanced accuracy {e.balanced_accuracy:.2f}")
    return f"collapsed: one class or chance level {span} ({'; '.join(parts)})"


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

    Nothing is pruned before the trial's effective grace epoch (:func:`effective_grace`):
    neither the collapse rule nor the inner pruner sees a trial during its frozen warm-up or
    the ``settle_epochs`` epochs after it unfreezes, so the inner pruner never compares a
    trial still warming up with trials that unfroze earlier. After that the trial is pruned
    when :func:`collapse_reason` finds a collapse, or when ``inner.prune`` says so.

    NaN handling: NaN metrics are never evidence of collapse (see :func:`collapse_reason`);
    NaN intermediate values are passed to the inner pruner unchanged (Optuna's median and
    percentile pruners prune a trial whose values are all NaN).

    It is an :class:`ExplainingPruner`: :meth:`judge` returns the reason of a prune (the
    inner pruner's through :func:`prune_reason`), and :meth:`prune` is ``judge`` answered.

    Args:
        max_class_share: Share of validation predictions in one class, in ``(0, 1]``, at or
            above which an epoch counts as collapsed.
        margin: An epoch with balanced accuracy at most ``1/C + margin`` counts as collapsed.
        patience: Consecutive collapsed epochs needed to prune, at least 1.
        grace_epochs: Epochs ``0 .. grace_epochs-1`` are never judged.
        settle_epochs: Epochs from the unfreeze on that are never judged (see above).
        inner: An Optuna pruner consulted after the grace period, or ``None``.
    """

    def __init__(
        self,
        max_class_share: float = 0.9,
        margin: float = 0.05,
        patience: int = 2,
        grace_epochs: int = 1,
        settle_epochs: int = 2,
        *,
        inner: BasePruner | None = None,
    ) -> None:
        if not 0.0 < max_class_share <= 1.0:
            raise ValueError(
                f"max_class_share must be in (0, 1], but got {max_class_share=}.")
        if not 0.0 <= margin < 1.0:
            raise ValueError(f"margin must be in [0, 1), but got {margin=}.")
        if patience < 1:
            raise ValueError(f"patience must be at least 1, but got {patience=}.")
        if grace_epochs < 0:
            raise ValueError(f"grace_epochs cannot be negative, but got {grace_epochs=}.")
        if settle_epochs < 0:
            raise ValueError(f"settle_epochs cannot be negative, but got {settle_epochs=}.")
        self._max_class_share = max_class_share
        self._margin = margin
        self._patience = patience
        self._grace_epochs = grace_epochs
        self._settle_epochs = settle_epochs
        self._inner = inner

    def judge(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str | None:
        """The reason to prune ``trial`` now, or ``None`` to let it go on."""
        step = trial.last_step
        if step is None:
            return None
        grace = effective_grace(self._grace_epochs, unfreeze_at_epoch(trial), self._settle_epochs)
        if step < grace:
            return None
        reason = collapse_reason(
            trial_evidence(trial),
            max_class_share=self._max_class_share,
            margin=self._margin,
            patience=self._patience,
            grace=grace,
        )
        if reason is not None:
            return reason
        if self._inner is not None:
            return prune_reason(self._inner, study, trial)
        return None

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return self.judge(study, trial) is not None
