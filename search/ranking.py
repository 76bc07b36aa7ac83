"""How trials rank: one order for every view (the leaderboard, the best trial, checkpoint
retention, review figures) and one rule for a trial's best step (the trainer's own)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import optuna
from optuna.trial import FrozenTrial, TrialState

from octtrain.train import is_improvement


def rank_key(value: float | None, number: int, maximize: bool) -> tuple[bool, float, int]:
    """How trials rank, best first (sort by this key): by value in the study's direction, a
    trial without a value (or NaN) last, ties to the earlier trial. The leaderboard, the best
    trial and checkpoint retention all rank with it."""
    if value is None or math.isnan(value):
        return True, 0.0, number
    return False, -value if maximize else value, number


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """The study's COMPLETE trials, best first (:func:`rank_key`)."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return sorted(done, key=lambda t: rank_key(t.value, t.number, maximize))


def best_step(values: Mapping[int, float], maximize: bool) -> tuple[float, int]:
    """The best value of ``{step: value}`` and its step, NaN skipped; ``(nan, -1)`` if none.

    Of equal values the first step wins: the trainer's own best epoch
    (:func:`octtrain.train.is_improvement` with no ``min_delta``).
    """
    best: float | None = None
    best_at = -1
    for step in sorted(values):
        if is_improvement(values[step], best, "max" if maximize else "min", 0.0):
            best, best_at = values[step], step
    return (math.nan if best is None else best), best_at
