"""The collapse rule: when a trial's own per-epoch record shows it has collapsed to one class.

Pure functions over :class:`EpochEvidence`, what the rule reads of one epoch of the trainer's
metrics record (:mod:`search.contract`): the validation prediction histogram, its largest share
and class, the validation balanced accuracy, and the *training* balanced accuracy of the epoch.
:class:`search.pruning.pruner.CollapsePruner` applies them to a trial.

An epoch is *collapsed* (:func:`collapsed`) when its validation predictions sit in one class
(one class holds at least ``max_class_share`` of them) or at chance (balanced accuracy at most
``1/C + margin``), and nothing else in the record says the model is learning: its training
balanced accuracy is at most ``1/C + train_margin`` (it does not separate the classes of its own
training data either) and its validation loss is not below ``(1 - loss_margin)`` times the loss
of a constant predictor of the validation class prior (its probabilities carry no information
about the inputs). Two criteria judge runs of collapsed epochs, each with its reason (one line,
stored as the trial's ``prune_reason``):

- :func:`stuck_reason`, judged from epoch 0 on, frozen warm-up included: ``stuck_patience``
  collapsed epochs in a row whose predictions do not move (the share of predictions that
  changed class between consecutive epochs, the total-variation distance of the two
  histograms, is at most ``max_prediction_change``).
- :func:`collapse_reason`, judged only from the trial's grace epoch on (after the frozen
  warm-up and ``settle_epochs`` more, :func:`effective_grace`): ``patience`` collapsed epochs
  in a row, moving or not.

Why these, measured on recorded learning curves (``BENCHMARKS.md``): a collapsed prediction
histogram alone is no evidence in the warm-up. The fixed recipe swings to a minority class in
its first epochs and then learns, and a trial that predicted only the majority class for its
first frozen epochs (the best trial of the tuning recording among them) recovered after its
predictions started to move; others that stayed almost still learned while their validation loss
had already dropped well below the prior's; trials that never learned repeated the same
histogram at chance-level training accuracy. After the grace period a collapsed validation with
a training accuracy that has left chance is a slow learner, not a collapse, and is left to the
inner pruner.

NaN handling: a NaN share or balanced accuracy is no evidence of collapse and breaks a run of
collapsed epochs; an epoch without a stored record does too. A NaN (or missing) *training*
balanced accuracy, or a missing validation loss or confusion matrix, is no evidence of learning
either: the criteria then judge from what is there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

STUCK, COLLAPSED = "stuck", "collapsed"  # the first word of each criterion's reasons


@dataclass(frozen=True)
class EpochEvidence:
    """What the collapse rule sees of one epoch. NaN where the trainer gave none."""

    epoch: int
    max_class_share: float = math.nan  # largest share of validation predictions in one class
    majority_class: int = -1  # the class with that share
    balanced_accuracy: float = math.nan  # validation
    num_classes: int = 0  # 0: unknown, so the balanced-accuracy criteria are skipped
    pred_hist: tuple[int, ...] = ()  # validation predictions per class
    train_balanced_accuracy: float = math.nan  # of the epoch's training batches
    loss: float = math.nan  # validation cross-entropy (unweighted, nats)
    prior_loss: float = math.nan  # the same loss of a constant predictor of the class prior
    majority_name: str = ""  # the name of majority_class, where the trainer's record gives it

    @classmethod
    def from_metrics(cls, epoch: int, metrics: Mapping[str, Any] | None) -> EpochEvidence:
        """Evidence from a trainer metrics dict (``None`` values, as stored for NaN, are NaN)."""
        metrics = metrics or {}
        hist = metrics.get("val/pred_hist") or []
        classes = hist or metrics.get("val/per_class_accuracy") or []
        majority = metrics.get("val/majority_class")
        confusion = metrics.get("val/confusion") or []
        return cls(
            epoch=epoch,
            max_class_share=_float(metrics.get("val/max_class_share")),
            majority_class=int(majority) if isinstance(majority, int) else -1,
            majority_name=str(metrics.get("val/majority_class_name") or ""),
            balanced_accuracy=_float(metrics.get("val/balanced_accuracy")),
            num_classes=len(classes),
            pred_hist=tuple(int(x) for x in hist if isinstance(x, (int, float))),
            train_balanced_accuracy=_float(metrics.get("train/balanced_accuracy")),
            loss=_float(metrics.get("val/loss")),
            prior_loss=prior_loss([sum(row) for row in confusion if isinstance(row, list)]),
        )

    @property
    def chance(self) -> float:
        return 1.0 / self.num_classes if self.num_classes else math.nan


@dataclass(frozen=True)
class Thresholds:
    """When one epoch counts as collapsed, and how still "stuck" is (see the module docstring)."""

    max_class_share: float = 0.9
    margin: float = 0.05
    train_margin: float = 0.05
    loss_margin: float = 0.1
    max_prediction_change: float = 0.01


def prior_loss(class_counts: Sequence[Any]) -> float:
    """Cross-entropy (nats) of always predicting the class shares ``class_counts`` on the data they
    count: the entropy of the class prior. NaN without counts."""
    counts = [float(c) for c in class_counts if isinstance(c, (int, float)) and c > 0]
    total = sum(counts)
    return -sum(c / total * math.log(c / total) for c in counts) if total else math.nan


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def effective_grace(grace_epochs: int, unfreeze_at_epoch: int, settle_epochs: int) -> int:
    """First epoch :func:`collapse_reason` (and an inner pruner) may judge.

    A trial that unfreezes its encoder at epoch ``u`` (0-based; ``-1``: never) is not judged
    by it during its frozen warm-up nor for ``settle_epochs`` epochs from the unfreeze on. With
    the default ``settle_epochs=2`` epochs ``0 .. u+1`` are left to :func:`stuck_reason`.
    """
    if unfreeze_at_epoch >= 0:
        return max(grace_epochs, unfreeze_at_epoch + settle_epochs)
    return grace_epochs


def collapsed_by_share(e: EpochEvidence, t: Thresholds) -> bool:
    return e.max_class_share >= t.max_class_share  # False for NaN


def collapsed_by_balanced_accuracy(e: EpochEvidence, t: Thresholds) -> bool:
    return e.num_classes > 0 and e.balanced_accuracy <= e.chance + t.margin


def collapsed(e: EpochEvidence, t: Thresholds) -> bool:
    """Validation predictions in one class or at chance, and no sign of learning."""
    return (collapsed_by_share(e, t) or collapsed_by_balanced_accuracy(e, t)) and not learning(e, t)


def learning(e: EpochEvidence, t: Thresholds) -> bool:
    """Training balanced accuracy above chance + ``train_margin``, or a validation loss below
    ``(1 - loss_margin)`` times the class prior's. False where neither is known."""
    if e.num_classes and e.train_balanced_accuracy > e.chance + t.train_margin:  # False for NaN
        return True
    return e.loss < (1.0 - t.loss_margin) * e.prior_loss  # False for NaN


def prediction_change(a: EpochEvidence, b: EpochEvidence) -> float:
    """Share of validation predictions that changed class between two epochs, at least: the
    total-variation distance of the two histograms, in [0, 1]. NaN when either is unknown."""
    na, nb = sum(a.pred_hist), sum(b.pred_hist)
    if not na or not nb or len(a.pred_hist) != len(b.pred_hist):
        return math.nan
    return 0.5 * sum(abs(x / na - y / nb) for x, y in zip(a.pred_hist, b.pred_hist, strict=True))


def _last_run(epochs: Sequence[EpochEvidence], length: int, first: int,
              holds: Callable[[EpochEvidence, EpochEvidence | None], bool]) -> list[EpochEvidence] | None:
    """The last ``length`` epochs, in order, if they are consecutive, all at or after ``first``
    and each satisfies ``holds(epoch, previous_in_run)``; else ``None``."""
    if length < 1:
        return None
    ordered = sorted(epochs, key=lambda e: e.epoch)[-length:]
    if len(ordered) < length or ordered[0].epoch < first:
        return None
    for i, e in enumerate(ordered):
        previous = ordered[i - 1] if i else None
        if previous is not None and e.epoch != previous.epoch + 1:
            return None
        if not holds(e, previous):
            return None
    return ordered


def stuck_reason(epochs: Sequence[EpochEvidence], t: Thresholds, patience: int) -> str | None:
    """Why the trial is stuck in a collapse (see the module docstring), or ``None``."""

    def holds(e: EpochEvidence, previous: EpochEvidence | None) -> bool:
        if not collapsed(e, t):
            return False
        # NaN (no histograms) is no evidence of standing still; the tolerance absorbs rounding
        return previous is None or prediction_change(previous, e) <= t.max_prediction_change + 1e-9

    run = _last_run(epochs, patience, 0, holds)
    if run is None:
        return None
    what = _describe_predictions(run, t)
    return f"{STUCK}: {what}, unchanged for {_epochs(run)}{_describe_no_learning(run)}"


def collapse_reason(epochs: Sequence[EpochEvidence], t: Thresholds, patience: int,
                    grace: int) -> str | None:
    """Why the trial has collapsed after its grace epoch (see the module docstring), or ``None``.

    Only the latest epochs count: a trial that recovers is judged anew.
    """
    run = _last_run(epochs, patience, grace, lambda e, _: collapsed(e, t))
    if run is None:
        return None
    return f"{COLLAPSED}: {_describe_predictions(run, t)} for {_epochs(run)}{_describe_no_learning(run)}"


def _epochs(run: Sequence[EpochEvidence]) -> str:
    n = len(run)
    span = f"epoch {run[0].epoch}" if n == 1 else f"epochs {run[0].epoch}-{run[-1].epoch}"
    return f"{n} epoch{'s' if n != 1 else ''} ({span})"


def _class(index: int, name: str) -> str:
    """``0 (normal)``, or ``0`` where the record names no class."""
    return f"{index} ({name})" if name else str(index)


def _describe_predictions(run: Sequence[EpochEvidence], t: Thresholds) -> str:
    if all(collapsed_by_share(e, t) for e in run):
        share = min(e.max_class_share for e in run)
        classes = sorted({(e.majority_class, e.majority_name) for e in run})
        which = (f"class {_class(*classes[0])}" if len(classes) == 1
                 else f"one class ({', '.join(_class(*c) for c in classes)})")
        return f"{math.floor(share * 100)}% of validation predictions are {which}"
    if all(collapsed_by_balanced_accuracy(e, t) for e in run):
        bacc = max(e.balanced_accuracy for e in run)
        return f"balanced accuracy {bacc:.2f} <= chance {run[0].chance:.2f} + margin {t.margin:.2f}"
    parts = []
    for e in run:
        if collapsed_by_share(e, t):
            parts.append(f"epoch {e.epoch}: {math.floor(e.max_class_share * 100):.0f}% class "
                         f"{_class(e.majority_class, e.majority_name)}")
        else:
            parts.append(f"epoch {e.epoch}: balanced accuracy {e.balanced_accuracy:.2f}")
    return f"one class or chance level ({'; '.join(parts)})"


def _describe_no_learning(run: Sequence[EpochEvidence]) -> str:
    """The no-learning evidence of a run: ``; training balanced accuracy <= 0.26 (chance 0.25),
    validation loss >= 0.93 (class prior 0.91)``, each part where it is known."""
    parts = []
    train = [e.train_balanced_accuracy for e in run if not math.isnan(e.train_balanced_accuracy)]
    if train and run[0].num_classes:
        parts.append(f"training balanced accuracy <= {max(train):.2f} (chance {run[0].chance:.2f})")
    losses = [(e.loss, e.prior_loss) for e in run if not (math.isnan(e.loss) or math.isnan(e.prior_loss))]
    if losses:
        loss, prior = min(x for x, _ in losses), max(p for _, p in losses)
        parts.append(f"validation loss >= {loss:.2f} (class prior {prior:.2f})")
    return "; " + ", ".join(parts) if parts else ""
