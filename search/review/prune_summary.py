"""What pruning did to a study: how many trials stopped, at which epoch, why, and the epochs saved.

A pruned trial's planned length is ``train.epochs`` of its own trainer config (the space's base
with the trial's overrides); the epochs it saved are the planned ones it did not run. Epochs run
count every finished trial's reported epochs, so ``epochs_planned`` is what the same trials would
have cost had none been pruned (a COMPLETE trial counts as run, early stopping included).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from octtrain.errors import OcttrainError, clip
from search.contract import end_reason, stored_overrides
from search.review.figures import prune_epochs
from search.space import SearchSpace


@dataclass
class PruneSummary:
    finished: int = 0  # COMPLETE + PRUNED
    pruned: int = 0
    by_epoch: Counter[int] = field(default_factory=Counter)  # epoch pruned at → trials
    by_kind: Counter[str] = field(default_factory=Counter)  # reason kind → trials
    examples: dict[str, str] = field(default_factory=dict)  # reason kind → one reason
    epochs_run: int = 0  # by the finished trials
    epochs_planned: int = 0  # had no finished trial been pruned

    @property
    def epochs_saved(self) -> int:
        return self.epochs_planned - self.epochs_run


def planned_epochs(space: SearchSpace, trial: FrozenTrial) -> int:
    """``train.epochs`` of the trial's trainer config; the base's when it cannot be rebuilt."""
    try:
        return space.trainer_config(stored_overrides(trial)).train.epochs
    except (OcttrainError, ValueError, TypeError):
        return space.base.train.epochs


def summarize_prunes(study: optuna.Study, space: SearchSpace) -> PruneSummary:
    summary = PruneSummary()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        summary.finished += 1
        run = len(trial.intermediate_values)
        summary.epochs_run += run
        summary.epochs_planned += run
    for trial, epoch, kind in prune_epochs(study):
        summary.finished += 1
        summary.pruned += 1
        run = len(trial.intermediate_values)
        summary.epochs_run += run
        summary.epochs_planned += max(run, planned_epochs(space, trial))
        summary.by_epoch[epoch] += 1
        summary.by_kind[kind] += 1
        summary.examples.setdefault(kind, clip(end_reason(trial), 160))
    return summary
