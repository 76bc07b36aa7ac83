"""How sure a trial's score is, and which trials the data cannot tell apart from the best.

A validation set of OCT volumes is small (the demo's: 10 a class), so two trials a few
thousandths apart in balanced accuracy are usually a tie. :func:`balanced_accuracy_interval`
bootstraps the score from the best epoch's validation confusion matrix, resampling each class's
volumes on their own (the split holds a fixed number per class, so resampling the whole set
would also vary the class mix, which balanced accuracy is built to ignore): the number of class
``c``'s ``n_c`` resampled volumes predicted right is binomial with the class's recall, and the
score of a resample is the mean recall over the classes present, as
:func:`octtrain.train.metrics.balanced_accuracy` computes it. The interval is the percentile
interval of the resampled scores (default 95 %, 2,000 resamples, a fixed seed so the same study
always prints the same numbers).

:func:`tied_with_best` lists the completed trials whose interval overlaps the best's (only when
the objective is balanced accuracy: the interval is of that score), and :func:`bound_warnings`
says when a trial's numeric parameter sits on a bound of its range, where the best setting may
lie outside the searched space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from search.contract import epoch_metrics, format_value, stored_best_epoch
from search.ranking import ranked
from search.study import stored_space

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0
BOUND_FRACTION = 0.02  # within this share of the (log) range from a bound counts as on it
OBJECTIVE = "val/balanced_accuracy"


@dataclass(frozen=True)
class Interval:
    """A score with its bootstrap interval, and the validation volumes per class it rests on."""

    value: float
    low: float
    high: float
    per_class: tuple[int, ...]

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]"


def balanced_accuracy_interval(confusion: Sequence[Sequence[float]], *, resamples: int = RESAMPLES,
                               level: float = LEVEL, seed: int = SEED) -> Interval | None:
    """The bootstrap interval of balanced accuracy (see module); None for a matrix without a
    true volume."""
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] == 0 or cm.shape[0] != cm.shape[1]:
        return None
    n = cm.sum(axis=1)
    present = n > 0
    if not present.any():
        return None
    n, correct = n[present].astype(np.int64), np.diag(cm)[present]
    recall = correct / n
    rng = np.random.default_rng(seed)
    draws = rng.binomial(n, recall, size=(resamples, len(n))) / n
    scores = draws.mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return Interval(float(recall.mean()), float(low), float(high), tuple(int(v) for v in n))


def trial_interval(trial: FrozenTrial) -> Interval | None:
    """The interval of ``trial``'s best epoch (its stored confusion matrix); None without one."""
    best = stored_best_epoch(trial)
    metrics = epoch_metrics(trial, best) if best is not None else None
    confusion = (metrics or {}).get("val/confusion")
    return balanced_accuracy_interval(confusion) if confusion else None


def tied_with_best(study: optuna.Study) -> list[tuple[FrozenTrial, Interval]]:
    """The best completed trial first, then every completed trial whose interval overlaps its
    interval, in rank order; empty when the objective is not balanced accuracy or the best has
    no interval."""
    if not _objective_is_balanced_accuracy(study):
        return []
    completed = [t for t in ranked(study) if t.state == TrialState.COMPLETE]
    if not completed:
        return []
    best = trial_interval(completed[0])
    if best is None:
        return []
    out = [(completed[0], best)]
    for trial in completed[1:]:
        interval = trial_interval(trial)
        if interval is not None and interval.overlaps(best):
            out.append((trial, interval))
    return out


def _objective_is_balanced_accuracy(study: optuna.Study) -> bool:
    return bool(stored_space(study).objective.metric_key == OBJECTIVE)


def bound_warnings(trial: FrozenTrial, fraction: float = BOUND_FRACTION) -> list[str]:
    """One line per numeric parameter of ``trial`` that sits on a bound of its range (within
    ``fraction`` of the range, on a log scale for a log parameter; an integer at the bound)."""
    out = []
    for name, value in trial.params.items():
        dist = trial.distributions.get(name)
        if not isinstance(dist, (FloatDistribution, IntDistribution)) or dist.low >= dist.high:
            continue
        side = _on_bound(float(value), float(dist.low), float(dist.high), dist.log,
                         isinstance(dist, IntDistribution), fraction)
        if side is not None:
            bound = dist.low if side == "lower" else dist.high
            out.append(f"{name} = {format_value(value)} sits on the {side} bound "
                       f"{format_value(bound)} of its range: the best setting may lie outside it")
    return out


def _on_bound(value: float, low: float, high: float, log: bool, integer: bool,
              fraction: float) -> str | None:
    if integer:
        return "lower" if value <= low else "upper" if value >= high else None
    if log:
        value, low, high = math.log(value), math.log(low), math.log(high)
    position = (value - low) / (high - low)
    return "lower" if position <= fraction else "upper" if position >= 1 - fraction else None
