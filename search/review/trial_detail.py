"""``octsearch trial N``: one trial in detail, and why it ended.

Its parameters; how it ended with the whole reason; for a pruned trial the epochs the prune rule
fired on (the ``epochs A-B`` its reason names, else the epoch it was pruned at), each with its
per-class accuracy and F1 and its confusion matrix, labelled ``prune epoch``, beside the same of
its best epoch, labelled ``best epoch``; and which value optuna-dashboard's *Value* column shows
for it: Optuna stores the told best value of a COMPLETE trial, but the **last** reported value of
a PRUNED one, which octsearch's tables (best so far) do not show.
"""

from __future__ import annotations

import math
import re

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.contract import (
    end_reason,
    epoch_metrics,
    format_value,
    stored_best_epoch,
    stored_epochs,
    stored_overrides,
    stored_run_dir,
    unfreeze_at_epoch,
)
from search.errors import OctsearchError
from search.review.leaderboard import class_names, epoch_lines, format_table, study_class_names, trial_row
from search.study import stored_space

_FIRED_ON = re.compile(r"\(epochs? (\d+)(?:-(\d+))?")


def fired_on(trial: FrozenTrial) -> list[int]:
    """The epochs a pruned trial's rule fired on: the first ``(epochs A-B`` or ``(epoch A`` its
    reason names, else the epoch it was pruned at (its last report); none for other states."""
    if trial.state != TrialState.PRUNED or not trial.intermediate_values:
        return []
    last = max(trial.intermediate_values)
    found = _FIRED_ON.search(end_reason(trial))
    if found is None:
        return [last]
    first = int(found.group(1))
    end = int(found.group(2)) if found.group(2) else first
    return list(range(first, min(end, last) + 1)) or [last]


def evidence_epochs(trial: FrozenTrial, best: int) -> list[tuple[str, int]]:
    """The epochs a review shows a trial's evidence for, in order: ``("prune", E)``, the last
    epoch its rule fired on, for a pruned trial; then ``("best", best)`` unless it is that same
    epoch or there is none (``best`` < 0)."""
    fired = fired_on(trial)
    shown = [("prune", fired[-1])] if fired else []
    if best >= 0 and best not in fired[-1:]:
        shown.append(("best", best))
    return shown


CURVE_HEADERS = ["epoch", "balanced accuracy", "majority share", ""]
CURVE_NOTE = ("the collapse rule's test (its defaults): an epoch is collapsed when at least 90% of "
              "its validation predictions are one class, or its balanced accuracy is at most chance "
              "+ 0.05, while training stays at chance")


def curve_rows(trial: FrozenTrial, best: int | None = None) -> list[list[str]]:
    """The trial's validation curve, one row per stored epoch: balanced accuracy, the share of
    the most-predicted class, and what the epoch was (``unfreeze``, ``prune``: the rule fired on
    it, ``best``: ``best``, else the stored best epoch)."""
    fired, unfreeze = set(fired_on(trial)), unfreeze_at_epoch(trial)
    best = stored_best_epoch(trial) if best is None else best
    rows = []
    for epoch, m in stored_epochs(trial):
        marks = [name for name, on in (("unfreeze", epoch == unfreeze), ("prune", epoch in fired),
                                        ("best", epoch == best)) if on]
        bacc, share = m.get("val/balanced_accuracy"), m.get("val/max_class_share")
        rows.append([str(epoch), "-" if bacc is None else f"{float(bacc):.3f}",
                     "-" if share is None else f"{float(share):.0%}", ", ".join(marks)])
    return rows


def dashboard_value(trial: FrozenTrial, metric: str, best: tuple[float, int]) -> str:
    """Which value optuna-dashboard shows as the trial's *Value*, and how it relates to its best."""
    if trial.value is None:
        return "none (a trial that did not complete or was not pruned has no value)"
    steps = sorted(trial.intermediate_values)
    if trial.state == TrialState.PRUNED and steps:
        return (f"{format_value(trial.value)}: the LAST reported {metric} (epoch {steps[-1]}), which "
                f"Optuna stores for a pruned trial; its best was {format_value(best[0])} at epoch {best[1]}")
    return f"{format_value(trial.value)}: the best {metric} (epoch {best[1]}), told when it completed"


def _epoch_block(trial: FrozenTrial, epoch: int, title: str, metric: str,
                 names: dict[int, str]) -> list[str]:
    value = trial.intermediate_values.get(epoch, math.nan)
    lines = [f"  {title}: {metric} {format_value(value)}"]
    metrics = epoch_metrics(trial, epoch)
    if metrics is None:
        return [*lines, "  (no record of this epoch is stored)"]
    share = metrics.get("val/max_class_share")
    if isinstance(share, (int, float)):
        majority = metrics.get("val/majority_class")
        which = names.get(majority, str(majority)) if isinstance(majority, int) else "?"
        lines[0] += f"; {share:.0%} of validation predictions are {which}"
    return lines + epoch_lines(metrics, names, f"epoch {epoch}")


def format_trial(study: optuna.Study, number: int) -> str:
    """Trial ``number`` of the study in detail (an error naming the range when there is none)."""
    trials = study.get_trials(deepcopy=False)
    found = [t for t in trials if t.number == number]
    if not found:
        span = f"trials 0-{len(trials) - 1}" if trials else "no trials"
        raise OctsearchError(f"study {study.study_name!r} has no trial {number} (it has {span})")
    trial = found[0]
    space = stored_space(study)
    metric = space.objective.metric
    row = trial_row(trial, study.direction == optuna.study.StudyDirection.MAXIMIZE)
    names = class_names(stored_run_dir(trial)) or study_class_names(trials)
    head = f"study {study.study_name!r}: trial {trial.number}" + (f" ({row.enqueued})" if row.enqueued else "")
    lines = [head, f"  state: {row.state} after {row.epochs} epoch{'s' * (row.epochs != 1)}"]
    if row.reason:
        lines.append(f"  reason: {row.reason}")
    lines.append("  params:")
    lines += [f"    {k}: {format_value(v)}" for k, v in stored_overrides(trial).items()]
    best = (row.value, row.epoch)
    lines.append(f"  dashboard Value: {dashboard_value(trial, metric, best)}")
    prune_epochs = fired_on(trial)
    for epoch in prune_epochs:
        title = f"prune epoch {epoch}" + (" (also the best epoch)" if epoch == row.epoch else "")
        lines += _epoch_block(trial, epoch, title, metric, names)
    if row.epoch >= 0 and row.epoch not in prune_epochs:
        lines += _epoch_block(trial, row.epoch, f"best epoch {row.epoch}", metric, names)
    curve = curve_rows(trial, row.epoch if row.epoch >= 0 else None)
    if curve:
        lines.append(f"  validation by epoch ({CURVE_NOTE}):")
        lines += ["    " + r for r in format_table(CURVE_HEADERS, curve).splitlines()]
    run_dir = stored_run_dir(trial)
    if run_dir:
        lines.append(f"  run dir: {run_dir}")
    return "\n".join(lines)
