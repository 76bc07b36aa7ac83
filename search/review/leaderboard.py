"""Review a study: trial rows and the leaderboard, the best trial, and its trainer config as a
YAML file (``octsearch trials`` is :mod:`search.review.trial_table`).

A trial's row shows its best objective value and that epoch: the told value and the stored
best epoch for a COMPLETE trial, the best intermediate value so far for a PRUNED or RUNNING
one (NaN values are skipped), nothing for a FAIL. Per-class accuracy is read from the
per-epoch metrics the reporter stored for that epoch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from octtrain.data import load_class_to_idx
from octtrain.errors import DataError, clip
from search.contract import (
    end_reason,
    enqueued_name,
    epoch_metrics,
    format_value,
    ran_on,
    stored_best_epoch,
    stored_overrides,
    stored_run_dir,
)
from search.errors import OctsearchError
from search.ranking import best_step, rank_key, ranked
from search.review.test_result import test_result_line
from search.review.uncertainty import bound_warnings, tied_with_best
from search.study import stored_space


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str
    value: float  # NaN: none yet
    epoch: int  # -1: none
    epochs: int  # epochs reported
    per_class_accuracy: list[float]
    reason: str
    params: dict[str, Any]
    enqueued: str
    ran_on: str = ""  # host and devices


def trial_row(trial: FrozenTrial, maximize: bool) -> TrialRow:
    if trial.state == TrialState.COMPLETE and trial.value is not None:
        value = trial.value
        epoch = stored_best_epoch(trial)
        if epoch is None:
            epoch = best_step(trial.intermediate_values, maximize)[1]
    elif trial.state == TrialState.FAIL:
        value, epoch = math.nan, -1
    else:
        value, epoch = best_step(trial.intermediate_values, maximize)
    metrics = epoch_metrics(trial, epoch) or {}
    per_class = [math.nan if a is None else float(a)
                 for a in metrics.get("val/per_class_accuracy") or []]
    return TrialRow(trial.number, trial.state.name, value, epoch, len(trial.intermediate_values),
                    per_class, end_reason(trial), dict(trial.params), enqueued_name(trial),
                    ran_on(trial))


def _maximize(study: optuna.Study) -> bool:
    return study.direction == StudyDirection.MAXIMIZE


def short_names(paths: Sequence[str]) -> dict[str, str]:
    """``model.head.hidden`` → ``hidden`` where the last part is unique."""
    last = [p.rsplit(".", 1)[-1] for p in paths]
    return {p: (s if last.count(s) == 1 else p) for p, s in zip(paths, last, strict=True)}


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def format_rows(rows: Sequence[TrialRow], param_paths: Sequence[str], metric: str,
                reason_width: int = 70) -> str:
    names = short_names(param_paths)
    headers = ["#", "state", metric, "epoch", "epochs", "per-class acc",
               *(names[p] for p in param_paths), "ran on", "reason"]
    body = []
    for r in rows:
        body.append([
            str(r.number) + (f" ({r.enqueued})" if r.enqueued else ""), r.state,
            format_value(r.value), "-" if r.epoch < 0 else str(r.epoch), str(r.epochs),
            " ".join(f"{a:.2f}" for a in r.per_class_accuracy) or "-",
            *(format_value(r.params[p]) if p in r.params else "" for p in param_paths),
            r.ran_on or "-", clip(r.reason, reason_width),
        ])
    return format_table(headers, body)


def _rows(study: optuna.Study) -> list[TrialRow]:
    maximize = _maximize(study)
    return [trial_row(t, maximize) for t in study.get_trials(deepcopy=False)]


def state_counts(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    return ", ".join(f"{n} {s.name.lower()}" for s, n in counts.items() if n) or "no trials"


def format_leaderboard(study: optuna.Study, top: int = 5) -> str:
    """The ``top`` completed trials, best first, and the study's trial counts."""
    space = stored_space(study)
    maximize = _maximize(study)
    rows = sorted((r for r in _rows(study) if r.state == "COMPLETE"),
                  key=lambda r: rank_key(r.value, r.number, maximize))[:top]
    head = f"study {study.study_name!r}: {state_counts(study)}"
    if not rows:
        return f"{head}\nno trial has completed yet"
    table = format_rows(rows, [p.path for p in space.params], space.objective.metric)
    tied = [t.number for t, _ in tied_with_best(study)[1:]]
    if tied:
        table += (f"\ntied with the best (95% intervals overlap): trial {', '.join(map(str, tied))}; "
                  "octsearch best has the intervals, octsearch compare A B the details")
    return f"{head}\ntop {len(rows)}:\n" + table


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best COMPLETE trial, or an OctsearchError saying why there is none."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise OctsearchError(f"no trial of study {study.study_name!r} has completed yet "
                             f"({state_counts(study)})")
    return ranked(study)[0]


def study_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial ``number`` of the study, or an OctsearchError naming the numbers there are."""
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise OctsearchError(f"study {study.study_name!r} has no trial {number} "
                             f"(trials 0-{len(trials) - 1})" if trials else
                             f"study {study.study_name!r} has no trials")
    return trials[number]


def completed_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial ``number`` of the study if it completed, or an OctsearchError saying why not."""
    trial = study_trial(study, number)
    if trial.state != TrialState.COMPLETE:
        raise OctsearchError(f"trial {number} of study {study.study_name!r} is {trial.state.name}, "
                             "not COMPLETE: only a completed trial has a config worth exporting")
    return trial


def uncertainty_lines(study: optuna.Study) -> list[str]:
    """The best trial's bootstrap interval, the trials tied with it, and its parameters on a
    bound of their range (:mod:`search.review.uncertainty`)."""
    lines = []
    tied = tied_with_best(study)
    if tied:
        best, interval = tied[0]
        counts = "/".join(str(n) for n in interval.per_class)
        lines.append(f"95% interval: [{interval.low:.4f}, {interval.high:.4f}] (bootstrap of each "
                     f"class's validation volumes, {counts} per class)")
        if len(tied) > 1:
            others = ", ".join(f"{t.number} ({i})" for t, i in tied[1:])
            lines.append(f"tied with the best (intervals overlap): trial {others}; the validation "
                         "set cannot tell them apart (export one with export-best --trial N)")
    lines += [f"warning: {w}" for w in bound_warnings(best_trial(study))]
    return lines


def format_best(study: optuna.Study) -> str:
    """The best trial: value, epoch, parameters, per-class metrics and confusion matrix."""
    space = stored_space(study)
    trial = best_trial(study)
    row = trial_row(trial, _maximize(study))
    metrics = epoch_metrics(trial, row.epoch) or {}
    lines = [f"study {study.study_name!r}: best trial {trial.number}"
             + (f" ({row.enqueued})" if row.enqueued else ""),
             f"  {space.objective.metric}: {row.value:.4f} at epoch {row.epoch} "
             f"({row.epochs} epochs run)"]
    lines += ["  " + line for line in uncertainty_lines(study)]
    lines.append("  params:")
    lines += [f"    {p.path}: {format_value(trial.params[p.path])}" for p in space.params
              if p.path in trial.params]
    run_dir = stored_run_dir(trial)
    lines += epoch_lines(metrics, class_names(run_dir), "that epoch")
    if run_dir is not None:
        lines.append(f"  run dir: {run_dir}")
    tested = test_result_line(study)
    if tested is not None:
        lines.append(f"  {tested}")
    return "\n".join(lines)


def epoch_lines(metrics: dict[str, Any], names: dict[int, str], which: str) -> list[str]:
    """One epoch's per-class accuracy and F1 and its confusion matrix, indented for a text view."""
    lines = []
    per_class_rows = []
    for c, (acc, f1) in enumerate(zip(metrics.get("val/per_class_accuracy") or [],
                                      metrics.get("val/per_class_f1") or [], strict=False)):
        per_class_rows.append([names.get(c, str(c)), format_value(_num(acc)),
                               format_value(_num(f1))])
    if per_class_rows:
        lines.append(f"  per class at {which}:")
        lines += ["    " + line for line in
                  format_table(["class", "accuracy", "f1"], per_class_rows).splitlines()]
    confusion = metrics.get("val/confusion")
    if confusion:
        labels = [names.get(c, str(c)) for c in range(len(confusion))]
        width, cell = max(len(label) for label in labels), max(5, *(len(label) for label in labels))
        lines.append("  confusion (rows: true class, columns: predicted):")
        lines.append("    " + " " * width + "".join(f" {label:>{cell}}" for label in labels))
        lines += [f"    {label:<{width}} " + " ".join(f"{int(v):{cell}d}" for v in row_)
                  for label, row_ in zip(labels, confusion, strict=False)]
    return lines


def study_class_names(trials: Sequence[FrozenTrial]) -> dict[int, str]:
    """Index → class name from the first trial whose run directory this host can read."""
    for trial in trials:
        names = class_names(stored_run_dir(trial))
        if names:
            return names
    return {}


def class_names(run_dir: str | None) -> dict[int, str]:
    """Index → class name from the trial's ``class_to_idx.json`` when this host can read the run
    directory (a study reviewed from another host shows indices instead)."""
    if not run_dir:
        return {}
    try:
        mapping = load_class_to_idx(Path(run_dir) / "class_to_idx.json")
    except (OSError, DataError):
        return {}
    return {idx: name for name, idx in mapping.items()}


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)


def export_best(study: optuna.Study, out: str | Path, number: int | None = None) -> Path:
    """Write the best trial's (or completed trial ``number``'s) complete trainer config to
    ``out`` (YAML) and return the path."""
    space = stored_space(study)
    trial = best_trial(study) if number is None else completed_trial(study, number)
    cfg = space.trainer_config(stored_overrides(trial))
    out = Path(out)
    header = (f"# octsearch export-best: study {study.study_name!r}, trial {trial.number}, "
              f"{space.objective.metric} {trial.value:.4f}\n"
              f"# reproduce with: octtrain train --config {out}\n")
    try:
        out.write_text(header + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    except OSError as err:
        raise OctsearchError(f"cannot write {str(out)!r}: {err.strerror}") from None
    return out
