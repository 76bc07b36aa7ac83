"""What optuna-dashboard shows of a search beyond Optuna's own: trial notes, the study note and
study figures.

A trial's note (markdown, optuna-dashboard's ``save_note``) says how it ended and why, its
per-class accuracy and F1 and its confusion matrix at the best epoch (class names from the
run directory's ``class_to_idx.json`` where this host can read it), the epochs it ran and its
time. The study's figures (``save_plotly_graph_object``, fixed ids so each refresh replaces
the last) are the per-class curves of the top trials, the majority-class share of every trial
per epoch, and the prune reasons by epoch. The study's note is ``octsearch why`` as markdown
(:func:`search.review.why.why_markdown`): the parameters ranked by how well they predict a collapse,
with their trials per value, and the late-bloomer suspects. All are written when a trial ends,
never per epoch.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from octtrain.errors import clip
from search.contract import OUTPUT_TAIL_ATTR, epoch_metrics, format_value, stored_run_dir
from search.optuna_compat import frozen as frozen_trial
from search.review import figures
from search.review.leaderboard import class_names, trial_row
from search.review.test_result import test_result_line
from search.review.trial_detail import CURVE_HEADERS, CURVE_NOTE, curve_rows, evidence_epochs, fired_on
from search.review.why import why_markdown

# graph object id → figure of the study
STUDY_FIGURES = {
    "per-class-accuracy-top-trials": figures.per_class_curves,
    "majority-class-share": figures.majority_share,
    "prune-reasons-by-epoch": figures.prune_reasons,
}


def _number(value: Any) -> str:
    return format_value(math.nan if value is None else float(value))


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(r) + " |" for r in rows)]


def per_class_lines(metrics: dict[str, Any], names: dict[int, str]) -> list[str]:
    """The per-class table and the confusion matrix of one epoch's metrics, as markdown."""
    accs = metrics.get("val/per_class_accuracy") or []
    f1s = metrics.get("val/per_class_f1") or []
    confusion = metrics.get("val/confusion") or []
    labels = [names.get(c, str(c)) for c in range(max(len(accs), len(confusion)))]
    lines: list[str] = []
    if accs:
        rows = [[labels[c], _number(a), _number(f1s[c] if c < len(f1s) else None),
                 str(sum(confusion[c])) if c < len(confusion) else "-"]
                for c, a in enumerate(accs)]
        lines += _md_table(["class", "accuracy", "F1", "volumes"], rows) + [""]
    if confusion:
        lines.append("Confusion matrix (rows: true class, columns: predicted):")
        lines.append("")
        lines += _md_table(["true \\ predicted", *labels[:len(confusion)]],
                           [[labels[i], *(str(int(v)) for v in row)] for i, row in enumerate(confusion)])
    return lines


def trial_note(trial: FrozenTrial, maximize: bool, metric: str) -> str:
    """The markdown note of a finished trial."""
    row = trial_row(trial, maximize)
    seconds = trial.duration.total_seconds() if trial.duration is not None else math.nan
    head = f"## Trial {trial.number}: {trial.state.name}" + (f" ({row.enqueued})" if row.enqueued else "")
    lines = [head, "", f"- epochs run: {row.epochs}",
             f"- time: {'-' if math.isnan(seconds) else f'{seconds:.0f} s'}"]
    if row.reason and trial.state != TrialState.COMPLETE:
        lines.append(f"- reason: {row.reason}")
    if not math.isnan(row.value):
        lines.append(f"- best {metric}: {row.value:.4f} at epoch {row.epoch}")
    run_dir = stored_run_dir(trial)
    if run_dir:
        lines.append(f"- run directory: `{run_dir}`")
    lines.append("")
    names = class_names(run_dir)
    prune_epochs = fired_on(trial)
    for kind, epoch in evidence_epochs(trial, row.epoch):  # what the rule acted on, then the best
        metrics = epoch_metrics(trial, epoch)
        if not metrics:
            continue
        if kind == "prune":
            fired = (f"epochs {prune_epochs[0]}-{epoch}" if len(prune_epochs) > 1 else f"epoch {epoch}")
            lines += [f"### Prune epoch {epoch} (the rule fired on {fired})", ""]
        else:
            lines += [f"### Best epoch {epoch}", ""]
        lines += per_class_lines(metrics, names) + [""]
    curve = curve_rows(trial, row.epoch if row.epoch >= 0 else None)
    if curve:
        lines += ["### Validation by epoch", "", f"Marks: unfreeze, prune, best; {CURVE_NOTE}.", ""]
        lines += _md_table(CURVE_HEADERS[:3] + ["epoch was"], curve)
    tail = trial.user_attrs.get(OUTPUT_TAIL_ATTR)
    if tail and trial.state == TrialState.FAIL:
        lines += ["", "### Last output", "", "```", clip(str(tail), 2000), "```"]
    return "\n".join(lines) + "\n"


def save_trial_note(study: optuna.Study, trial: optuna.Trial, metric: str) -> str:
    """Write the note of the finished ``trial`` to the study; the note."""
    from optuna_dashboard import save_note

    frozen = frozen_trial(study, trial)
    note = trial_note(frozen, study.direction == StudyDirection.MAXIMIZE, metric)
    save_note(trial, note)
    return note


def save_study_note(study: optuna.Study) -> str:
    """Write the study's note (why its trials ended as they did) over the last one; the note."""
    from optuna_dashboard import save_note

    note = why_markdown(study)
    tested = test_result_line(study)
    if tested is not None:
        note = f"**{tested}**\n\n{note}"
    save_note(study, note)
    return note


def refresh_study_figures(study: optuna.Study) -> list[str]:
    """Draw the study figures again over the previous ones; their ids."""
    from optuna_dashboard import save_plotly_graph_object

    for graph_id, draw in STUDY_FIGURES.items():
        save_plotly_graph_object(study, draw(study), graph_object_id=graph_id)
    return list(STUDY_FIGURES)
