"""Late-bloomer suspects: pruned trials that may have been stopped before their jump.

On recorded Scenario-A curves the best configuration jumped late (``BENCHMARKS.md``), and a rule
that judges early loses such trials. A pruned trial is a suspect when either holds at the epoch
it was pruned (its last reported epoch, ``e``):

- it was **still improving**: its validation or its training balanced accuracy at ``e`` is at
  least :data:`MIN_RISE` above its value ``window`` epochs before (or its first epoch, when it ran
  fewer); validation balanced accuracy is the epoch record's, or the trial's reported value where
  the record has none (a maximized objective);
- it was pruned **near its unfreeze epoch** ``u``: ``|e - u| <= near_unfreeze``, so its fine-tuned
  encoder had too few epochs to show what it does (or none: pruned in the frozen warm-up).

A suspect is listed with the rule that pruned it; ``octsearch rerun N`` runs its configuration
again without pruning (:mod:`search.study.rerun`), and a rerun already queued or run is named.
Epochs are read through :func:`search.contract.epoch_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.contract import end_reason, epoch_metrics, rerun_of, stored_prune_kind, unfreeze_at_epoch
from search.pruning import prune_kind

MIN_RISE = 0.01  # balanced accuracy: a smaller rise is noise, not improvement


@dataclass(frozen=True)
class Suspect:
    number: int
    epoch: int  # the epoch it was pruned at (its last reported one)
    unfreeze: int  # -1: never
    kind: str  # which rule pruned it (search.pruning.prune_kind)
    why: list[str]  # what makes it a suspect, e.g. "validation balanced accuracy 0.35 -> 0.40 (epochs 0-1)"
    reason: str  # the stored prune reason
    reruns: list[int]  # trials that run its configuration again (octsearch rerun)


def rise(values: Mapping[int, float], epoch: int, window: int) -> tuple[int, float, float] | None:
    """``(since, from, to)`` when ``values[epoch]`` is at least :data:`MIN_RISE` above the value at
    the first epoch of ``epoch - window .. epoch`` that has one (NaN skipped); else ``None``."""
    now = values.get(epoch, math.nan)
    earlier = [k for k in range(max(0, epoch - window), epoch) if not math.isnan(values.get(k, math.nan))]
    if math.isnan(now) or not earlier:
        return None
    since = earlier[0]
    return (since, values[since], now) if now - values[since] >= MIN_RISE else None


def _series(trial: FrozenTrial, key: str, fallback: bool) -> dict[int, float]:
    out = {}
    for step, reported in trial.intermediate_values.items():
        value = (epoch_metrics(trial, step) or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[step] = float(value)
        elif fallback:
            out[step] = reported
    return out


def suspicion(trial: FrozenTrial, maximize: bool, window: int = 2, near_unfreeze: int = 2) -> list[str]:
    """Why the pruned ``trial`` may be a late bloomer (see the module docstring); empty: it is not."""
    if trial.last_step is None:
        return []
    epoch = trial.last_step
    why = []
    for what, key, fallback in (("validation", "val/balanced_accuracy", maximize),
                                ("training", "train/balanced_accuracy", False)):
        up = rise(_series(trial, key, fallback), epoch, window)
        if up is not None:
            since, a, b = up
            why.append(f"{what} balanced accuracy {a:.2f} -> {b:.2f} (epochs {since}-{epoch})")
    unfreeze = unfreeze_at_epoch(trial)
    if unfreeze >= 0 and abs(epoch - unfreeze) <= near_unfreeze:
        why.append(_near(epoch, unfreeze))
    return why


def _near(epoch: int, unfreeze: int) -> str:
    """``pruned 1 epoch after its unfreeze epoch 3``."""
    if epoch == unfreeze:
        return f"pruned at its unfreeze epoch {unfreeze}"
    n = abs(epoch - unfreeze)
    return f"pruned {n} epoch{'s' * (n != 1)} {'after' if epoch > unfreeze else 'before'} its unfreeze epoch {unfreeze}"


def late_bloomers(study: optuna.Study, window: int = 2, near_unfreeze: int = 2) -> list[Suspect]:
    """Every pruned trial of ``study`` that may be a late bloomer, by trial number."""
    maximize = study.direction == StudyDirection.MAXIMIZE
    trials = study.get_trials(deepcopy=False)
    reruns: dict[int, list[int]] = {}
    for t in trials:
        origin = rerun_of(t)
        if origin is not None:
            reruns.setdefault(origin, []).append(t.number)
    out = []
    for t in trials:
        if t.state != TrialState.PRUNED:
            continue
        why = suspicion(t, maximize, window, near_unfreeze)
        if why:
            reason = end_reason(t)
            out.append(Suspect(t.number, t.last_step if t.last_step is not None else -1, unfreeze_at_epoch(t),
                               stored_prune_kind(t) or prune_kind(reason), why, reason, reruns.get(t.number, [])))
    return out
