"""The reach rule: prune a learning trial only when its own record says it can no longer reach the
incumbent.

Median, percentile, successive halving and Hyperband ask "is this trial below the others *now*?".
On recorded Scenario-A curves every one of them loses late bloomers: the best configuration of
the validation recording reads 0.27 0.25 0.45 0.46 0.58 and then 0.93, and a rank-based rule
stops it at its unfreeze epoch (``BENCHMARKS.md``). The reach rule asks instead "can this trial
still get to the incumbent (the best completed trial) in the epochs it has left?", from the
trial's own per-epoch record:

- **its best value so far** (a drop never counts against a trial: the search keeps each trial's
  best epoch);
- **its recent rate of progress**, the faster of two: the gain of its best validation value per
  epoch over the last ``window`` epochs, and the gain of its *training* balanced accuracy per
  epoch over the same epochs. Validation balanced accuracy is coarse and jumps; training balanced
  accuracy rises smoothly while a trial learns, so a trial whose validation value stalls while it
  still fits its training data keeps its rate (that is how the late bloomers above read before
  their jump);
- **the epochs it has left** (its budget, ``train.epochs``, stored with the trial);
- **the validation set's resolution**: ``tolerance_volumes`` times the balanced accuracy that one
  validation volume of the smallest class is worth, ``1 / (C * n_min)`` from the epoch's
  confusion matrix (0.025-0.06 on the recordings); a difference that small is noise.

The trial is pruned when ``best + tolerance + optimism * rate * epochs_left`` stays below the
incumbent: a straight line at its current rate is optimistic for a learning curve that bends
over, and the rate is re-measured every epoch, so a trial that speeds up is judged anew.

A trial is not judged during its frozen warm-up nor in its first ``settle_epochs`` epochs from
the unfreeze (what a frozen encoder's head does says little about the fine-tuned model), nor
before ``grace_epochs``, nor in its last epoch (it completes anyway), nor before the study has
``n_startup_trials`` completed trials (there is no incumbent). It needs a maximized objective
(balanced accuracy, macro F1, accuracy), as the training-accuracy rate and the resolution are in
those units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from optuna.pruners import BasePruner
from optuna.study import StudyDirection
from optuna.trial import TrialState

from search.contract import epoch_budget, epoch_metrics, unfreeze_at_epoch

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Reach:
    """What a trial can still reach by the end of its budget, and why (all in objective units)."""

    epoch: int  # the epoch judged (0-based)
    best: float  # best value so far
    best_epoch: int
    rate: float  # per epoch: max(validation_rate, training_rate), never negative
    validation_rate: float  # gain of the best value per epoch over the window
    training_rate: float  # gain of training balanced accuracy per epoch over the window (0: unknown)
    since: int  # first epoch of the window
    epochs_left: int
    tolerance: float  # the validation set's resolution allowance
    optimism: float

    @property
    def value(self) -> float:
        return self.best + self.tolerance + self.optimism * self.rate * self.epochs_left

    def describe(self, incumbent: float, incumbent_trial: int) -> str:
        """One line: ``reach: at most 0.61 by epoch 9 (best 0.48 at epoch 3, +0.02/epoch ...)``."""
        which = "training balanced accuracy" if self.training_rate > self.validation_rate else "best validation value"
        pace = (f"+{self.rate:.3f}/epoch ({which}, epochs {self.since}-{self.epoch})"
                f"{f' x {self.optimism:g}' if self.optimism != 1 else ''} for {self.epochs_left} more epochs"
                if self.rate > 0 else f"no progress over epochs {self.since}-{self.epoch}")
        return (f"reach: at most {self.value:.2f} by epoch {self.epoch + self.epochs_left} (best {self.best:.2f} at "
                f"epoch {self.best_epoch}, {pace}, +{self.tolerance:.3f} for the validation set's resolution), "
                f"below the incumbent {incumbent:.2f} (trial {incumbent_trial})")


def resolution(metrics: Mapping[str, Any] | None) -> float:
    """Balanced accuracy that one validation volume of the smallest class is worth:
    ``1 / (C * n_min)`` from the epoch's validation confusion matrix (rows: true classes).
    NaN where the record has no confusion matrix."""
    confusion = (metrics or {}).get("val/confusion") or []
    counts = [sum(row) for row in confusion if isinstance(row, list)]
    present = [c for c in counts if isinstance(c, (int, float)) and c > 0]
    return 1.0 / (len(counts) * min(present)) if present else math.nan


def reach(values: Mapping[int, float], training: Mapping[int, float], epoch: int, epochs_left: int,
          *, window: int, optimism: float, tolerance: float) -> Reach:
    """The :class:`Reach` of a trial at ``epoch`` from its intermediate ``values`` and training
    balanced accuracies by epoch (NaN values are skipped; a missing training value is no evidence
    of progress)."""
    seen = {k: v for k, v in values.items() if k <= epoch and not math.isnan(v)}
    best_epoch = max(seen, key=lambda k: (seen[k], -k)) if seen else epoch
    best = seen.get(best_epoch, math.nan)
    since = max(0, epoch - window)
    span = max(1, epoch - since)
    before = [v for k, v in seen.items() if k <= since]
    validation_rate = max(0.0, (best - max(before)) / span) if before and seen else 0.0
    start, end = training.get(since, math.nan), training.get(epoch, math.nan)
    training_rate = (end - start) / span if not (math.isnan(start) or math.isnan(end)) else 0.0
    training_rate = max(0.0, training_rate)
    return Reach(epoch, best, best_epoch, max(validation_rate, training_rate), validation_rate,
                 training_rate, since, epochs_left, tolerance, optimism)


def training_balanced_accuracy(trial: optuna.trial.FrozenTrial) -> dict[int, float]:
    out: dict[int, float] = {}
    for step in trial.intermediate_values:
        value = (epoch_metrics(trial, step) or {}).get("train/balanced_accuracy")
        out[step] = float(value) if isinstance(value, (int, float)) else math.nan
    return out


def incumbent(completed: Sequence[optuna.trial.FrozenTrial]) -> tuple[float, int] | None:
    """The best value among completed trials and its trial number (maximized), or ``None``."""
    valued = [(t.value, t.number) for t in completed if t.value is not None and not math.isnan(t.value)]
    return max(valued, key=lambda vn: (vn[0], -vn[1])) if valued else None


def inferred_budget(completed: Sequence[optuna.trial.FrozenTrial]) -> int | None:
    """For a trial stored without its budget: the most epochs a completed trial reported."""
    steps = [t.last_step for t in completed if t.last_step is not None]
    return max(steps) + 1 if steps else None


class ReachPruner(BasePruner):
    """Prune a trial that cannot reach the best completed trial at its own recent pace.

    See the module docstring for the rule. It is an
    :class:`~search.pruning.pruner.ExplainingPruner`: :meth:`judge` returns the reason (what the
    trial could still reach, how, and the incumbent), :meth:`prune` is ``judge`` answered.

    Args:
        settle_epochs: Epochs from the unfreeze (included) that are never judged, >= 0.
        grace_epochs: Epochs ``0 .. grace_epochs-1`` are never judged, >= 0.
        window: Epochs over which the rate of progress is measured, >= 1.
        optimism: Multiplies the rate in the extrapolation, > 0 (1: a straight line).
        tolerance_volumes: Allowance in validation volumes of the smallest class, >= 0.
        n_startup_trials: Completed trials needed before any trial is judged, >= 1.
    """

    def __init__(self, settle_epochs: int = 1, grace_epochs: int = 1, window: int = 2,
                 optimism: float = 1.0, tolerance_volumes: float = 1.0, n_startup_trials: int = 1) -> None:
        if settle_epochs < 0 or grace_epochs < 0:
            raise ValueError("settle_epochs and grace_epochs cannot be negative, "
                             f"but got {settle_epochs=}, {grace_epochs=}.")
        if window < 1:
            raise ValueError(f"window must be at least 1, but got {window=}.")
        if not optimism > 0:
            raise ValueError(f"optimism must be positive, but got {optimism=}.")
        if not tolerance_volumes >= 0:
            raise ValueError(f"tolerance_volumes cannot be negative, but got {tolerance_volumes=}.")
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be at least 1, but got {n_startup_trials=}.")
        self._settle = settle_epochs
        self._grace = grace_epochs
        self._window = window
        self._optimism = optimism
        self._volumes = tolerance_volumes
        self._startup = n_startup_trials

    def first_judged_epoch(self, unfreeze_at: int) -> int:
        """A trial that unfreezes at epoch ``unfreeze_at`` (``-1``: never) is judged from here on."""
        return max(self._grace, unfreeze_at + self._settle) if unfreeze_at >= 0 else self._grace

    def judge(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str | None:
        """The reason to prune ``trial`` now, or ``None`` to let it go on."""
        step = trial.last_step
        if step is None or step < self.first_judged_epoch(unfreeze_at_epoch(trial)):
            return None
        if study.direction != StudyDirection.MAXIMIZE:
            raise ValueError("the reach pruner judges a maximized objective")
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        best = incumbent(completed)
        if len(completed) < self._startup or best is None:
            return None
        budget = epoch_budget(trial) or inferred_budget(completed)
        if budget is None or step >= budget - 1:
            return None
        tolerance = self._volumes * resolution(epoch_metrics(trial, step))
        r = reach(trial.intermediate_values, training_balanced_accuracy(trial), step, budget - 1 - step,
                  window=self._window, optimism=self._optimism,
                  tolerance=0.0 if math.isnan(tolerance) else tolerance)
        if math.isnan(r.best) or r.value >= best[0]:
            return None
        return r.describe(*best)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return self.judge(study, trial) is not None
