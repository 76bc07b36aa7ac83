"""``octsearch compare A B``: two trials side by side, to choose between trials the validation
set cannot rank (:func:`search.review.uncertainty.tied_with_best`).

It shows the parameters that differ (and how many are equal), how each trial ended with its
value and bootstrap interval, the validation balanced accuracy and majority-class share of every
epoch of both (their curves, as a table; the unfreeze epoch marked), per-class accuracy at each
one's best epoch (a pruned trial's: the last epoch its rule fired on), and both confusion
matrices.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial

from search.contract import (
    end_reason,
    enqueued_name,
    epoch_metrics,
    format_value,
    stored_best_epoch,
    stored_epochs,
    stored_run_dir,
    unfreeze_at_epoch,
)
from search.review.leaderboard import class_names, format_table, study_trial
from search.review.trial_detail import fired_on
from search.review.uncertainty import trial_interval


def _title(trial: FrozenTrial) -> str:
    name = enqueued_name(trial)
    return f"trial {trial.number}" + (f" ({name})" if name else "")


def _number(value: Any) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def format_compare(study: optuna.Study, a: int, b: int) -> str:
    """Trials ``a`` and ``b`` of the study side by side (see module)."""
    first, second = study_trial(study, a), study_trial(study, b)
    pair = (first, second)
    lines = [f"study {study.study_name!r}: {_title(first)} vs {_title(second)}"]
    intervals = [trial_interval(t) for t in pair]
    for trial, interval in zip(pair, intervals, strict=True):
        value = format_value(trial.value) if trial.value is not None else "-"
        lines.append(f"  {_title(trial)}: {trial.state.name}, value {value}"
                     + (f", 95% interval [{interval.low:.4f}, {interval.high:.4f}]" if interval else "")
                     + (f"; {end_reason(trial)}" if end_reason(trial) else ""))
    if (i := intervals[0]) and (j := intervals[1]):
        lines.append("  their intervals overlap: the validation set cannot tell them apart"
                     if i.overlaps(j) else "  their intervals do not overlap")
    names = sorted(set(first.params) | set(second.params))
    differ = [n for n in names if first.params.get(n) != second.params.get(n)]
    lines.append(f"parameters that differ ({len(differ)} of {len(names)}; the rest are equal):")
    if differ:
        rows = [[n, _param(first, n), _param(second, n)] for n in differ]
        lines += ["  " + r for r in format_table(["parameter", _title(first), _title(second)],
                                                 rows).splitlines()]
    lines.append("validation by epoch (balanced accuracy / majority-class share; "
                 "u: the encoder unfreezes, *: the best epoch):")
    lines += ["  " + r for r in format_table(["epoch", _title(first), _title(second)],
                                             _curve_rows(pair)).splitlines()]
    for trial in pair:
        lines += _best_epoch_lines(trial)
    return "\n".join(lines)


def _param(trial: FrozenTrial, name: str) -> str:
    return format_value(trial.params[name]) if name in trial.params else "(not set)"


def _curve_rows(pair: tuple[FrozenTrial, FrozenTrial]) -> list[list[str]]:
    curves = [dict(stored_epochs(t)) for t in pair]
    epochs = sorted(set(curves[0]) | set(curves[1]))
    rows = []
    for epoch in epochs:
        cells = [str(epoch)]
        for trial, curve in zip(pair, curves, strict=True):
            m = curve.get(epoch)
            if m is None:
                cells.append("")
                continue
            mark = ("u" if epoch == unfreeze_at_epoch(trial) else "") + (
                "*" if epoch == stored_best_epoch(trial) else "")
            cells.append(f"{_number(m.get('val/balanced_accuracy'))} / "
                         f"{_number(m.get('val/max_class_share'))} {mark}".rstrip())
        rows.append(cells)
    return rows


def _best_epoch_lines(trial: FrozenTrial) -> list[str]:
    best, which = stored_best_epoch(trial), "best"
    if best is None and fired_on(trial):  # a pruned trial: the last epoch its rule fired on
        best, which = fired_on(trial)[-1], "prune"
    metrics = epoch_metrics(trial, best) if best is not None else None
    if not metrics:
        return [f"{_title(trial)}: no stored epoch to show"]
    names = class_names(stored_run_dir(trial))
    accs = metrics.get("val/per_class_accuracy") or []
    confusion = metrics.get("val/confusion") or []
    labels = [names.get(c, str(c)) for c in range(max(len(accs), len(confusion)))]
    lines = [f"{_title(trial)} at its {which} epoch {best}: per-class accuracy "
             + ", ".join(f"{labels[c]} {_number(a)}" for c, a in enumerate(accs))]
    if confusion:
        lines.append("  confusion (rows: true class, columns: predicted):")
        rows = [[labels[i], *(str(int(v)) for v in row)] for i, row in enumerate(confusion)]
        lines += ["    " + r for r in format_table(["true \\ pred", *labels[:len(confusion)]],
                                                   rows).splitlines()]
    return lines
