"""``octsearch report``: a study as one self-contained HTML file.

The file opens in a browser without network access: plotly's JavaScript is inlined once in the
head and every figure is a ``<div>`` with its data. Sections (each a ``<section id=...>``):
the leaderboard with per-class metrics and prune reasons, why trials ended as they did (the
parameters ranked by how well they predict a collapse, their trials per value by ending, and the
late-bloomer suspects: :mod:`search.review.why`), the optimisation history, the intermediate values
of every trial coloured by state, parameter importances (Optuna's default evaluator, on completed
trials only), parallel coordinates of every finished trial coloured by how it ended, the collapse
view (majority-class share per epoch) and the prune summary. It reads only what the study
stores, so a running study gives a report of its trials so far.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re
import warnings
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
import plotly.offline
from optuna.trial import TrialState

from search.contract import epoch_metrics, format_value
from search.errors import OctsearchError
from search.ranking import rank_key
from search.review import figures
from search.review.attribution import attribute
from search.review.curve_svg import curve_svg
from search.review.late_bloomers import late_bloomers
from search.review.leaderboard import TrialRow, study_class_names, trial_row
from search.review.prune_summary import PruneSummary, summarize_prunes
from search.review.test_result import test_result_line
from search.review.trial_detail import CURVE_HEADERS, CURVE_NOTE, curve_rows, evidence_epochs, fired_on
from search.review.uncertainty import tied_with_best, trial_interval
from search.review.why import (
    BIN_HEADERS,
    RANKING_HEADERS,
    SUSPECT_HEADERS,
    SUSPECTS_NOTE,
    bin_rows,
    measure_note,
    ranking_rows,
    summary,
    suspect_rows,
)
from search.study import stored_space

SECTIONS = ("leaderboard", "why", "history", "intermediate", "importance", "parallel", "collapse",
            "per-class", "prunes", "evidence")

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
td.text { text-align: left; max-width: 40em; }
tr.COMPLETE td:nth-child(2) { color: #2ca02c; } tr.PRUNED td:nth-child(2) { color: #ff7f0e; }
tr.FAIL td:nth-child(2) { color: #d62728; } tr.RUNNING td:nth-child(2) { color: #1f77b4; }
.plot { min-height: 450px; } p.note { color: #666; }
"""


def _figure(fig: go.Figure, div_id: str) -> str:
    return str(fig.to_html(include_plotlyjs=False, full_html=False, div_id=div_id,
                           config={"displaylogo": False}))


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}">\n<h2>{html.escape(title)}</h2>\n{body}\n</section>'


def _cell(value: Any, text: bool = False) -> str:
    shown = format_value(value) if isinstance(value, float) else str(value)
    return f'<td{" class=text" if text else ""}>{html.escape(shown)}</td>'


def _sorted_rows(study: optuna.Study) -> list[TrialRow]:
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    rows = [trial_row(t, maximize) for t in study.get_trials(deepcopy=False)]
    return sorted(rows, key=lambda r: rank_key(r.value, r.number, maximize))


def leaderboard(study: optuna.Study, param_paths: list[str], metric: str) -> str:
    """Every trial, best first: why it ended, value, its bootstrap interval (``≈ best``: the
    validation set cannot tell it from the best), epochs, per-class accuracy and F1 at its best
    epoch, params."""
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    rows = _sorted_rows(study)
    if not rows:
        return _note("no trials yet")
    names = study_class_names(list(trials.values()))
    n_classes = max((len(r.per_class_accuracy) for r in rows), default=0)
    labels = [names.get(c, str(c)) for c in range(n_classes)]
    tied = {t.number: i for t, i in tied_with_best(study)}
    best = next(iter(tied), None)
    head = ["#", "state", "reason", metric, "95% interval", "best epoch", "epochs",
            *(f"acc {n}" for n in labels), *(f"F1 {n}" for n in labels), *param_paths]
    out = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for r in rows:
        metrics = epoch_metrics(trials[r.number], r.epoch) or {}
        f1 = [math.nan if v is None else float(v) for v in metrics.get("val/per_class_f1") or []]
        accs = r.per_class_accuracy + [math.nan] * (n_classes - len(r.per_class_accuracy))
        f1 += [math.nan] * (n_classes - len(f1))
        interval = tied.get(r.number) or (trial_interval(trials[r.number]) if r.state == "COMPLETE" else None)
        span = "" if interval is None else f"[{interval.low:.3f}, {interval.high:.3f}]" + (
            " best" if r.number == best else " ≈ best" if r.number in tied else "")
        cells = [_cell(f"{r.number} ({r.enqueued})" if r.enqueued else r.number), _cell(r.state),
                 _cell(r.reason, text=True), _cell(r.value), _cell(span, text=True),
                 _cell("-" if r.epoch < 0 else r.epoch), _cell(r.epochs),
                 *(_cell(a) for a in accs), *(_cell(v) for v in f1),
                 *(_cell(r.params.get(p, "")) for p in param_paths)]
        out.append(f'<tr class="{r.state}">' + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _optuna_figure(study: optuna.Study, section_id: str, draw: Any, min_complete: int,
                   why: str) -> str:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < min_complete:
        return _note(f"{why} (the study has {len(complete)} completed)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = draw(study)
    except Exception as err:  # noqa: BLE001 - one figure Optuna cannot draw must not lose the report
        return _note(f"not available: {type(err).__name__}: {err}")
    fig.update_layout(template=figures.TEMPLATE)  # one style with the report's own figures
    if section_id == "history":
        figures.integer_ticks(fig, "x")  # trial numbers
    return _figure(fig, f"plot-{section_id}")


def prune_summary_html(summary: PruneSummary) -> str:
    lines = [f"<p>{summary.pruned} of {summary.finished} finished trials were pruned; "
             f"{summary.epochs_run} epochs were run where running every trial to its end would "
             f"have taken {summary.epochs_planned}: {summary.epochs_saved} epochs saved.</p>"]
    if summary.by_epoch:
        lines.append("<table><tr><th>pruned at epoch</th><th>trials</th></tr>"
                     + "".join(f"<tr><td>{e}</td><td>{n}</td></tr>"
                               for e, n in sorted(summary.by_epoch.items())) + "</table>")
    if summary.by_kind:
        lines.append("<table><tr><th>reason</th><th>trials</th><th>example</th></tr>" + "".join(
            f"<tr><td class=text>{html.escape(k)}</td><td>{n}</td>"
            f"<td class=text>{html.escape(summary.examples.get(k, ''))}</td></tr>"
            for k, n in sorted(summary.by_kind.items())) + "</table>")
    return "\n".join(lines)


def _table(headers: list[str], rows: list[list[str]], text_columns: tuple[int, ...] = (0,)) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
    body = ("<tr>" + "".join(_cell(c, text=i in text_columns) for i, c in enumerate(r)) + "</tr>" for r in rows)
    return "\n".join(["<table>", head, *body, "</table>"])


def evidence_html(study: optuna.Study) -> str:
    """Each pruned trial, folded: the epoch its rule fired on last (per-class table and confusion
    matrix under the class names), its best epoch beside it, and its validation curve."""
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    if not pruned:
        return _note("no trial was pruned")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    names = study_class_names(pruned)
    parts = [_note(f"Curves: {CURVE_NOTE}.")]
    for trial in pruned:
        row = trial_row(trial, maximize)
        fired = fired_on(trial)
        blocks = [f"<summary>trial {html.escape(str(trial.number))}"
                  + (f" ({html.escape(row.enqueued)})" if row.enqueued else "")
                  + f": {html.escape(row.reason)}</summary>"]
        for kind, epoch in evidence_epochs(trial, row.epoch):
            metrics = epoch_metrics(trial, epoch)
            if metrics:
                blocks.append(f"<h4>{kind} epoch {epoch}</h4>" + _epoch_tables(metrics, names))
        blocks.append(curve_svg(trial, fired))
        blocks.append(_table(CURVE_HEADERS, curve_rows(trial, row.epoch if row.epoch >= 0 else None),
                             (3,)))
        parts.append("<details>" + "\n".join(blocks) + "</details>")
    return "\n".join(parts)


def _epoch_tables(metrics: dict[str, Any], names: dict[int, str]) -> str:
    accs, f1s = metrics.get("val/per_class_accuracy") or [], metrics.get("val/per_class_f1") or []
    confusion = metrics.get("val/confusion") or []
    labels = [names.get(c, str(c)) for c in range(max(len(accs), len(confusion)))]
    per_class = [[labels[c], a if a is not None else "-", f1s[c] if c < len(f1s) and f1s[c] is not None else "-",
                  sum(confusion[c]) if c < len(confusion) else "-"] for c, a in enumerate(accs)]
    matrix = [[labels[i], *row] for i, row in enumerate(confusion)]
    return (_table(["class", "accuracy", "F1", "volumes"], per_class)
            + _table(["true \\ predicted", *labels[:len(confusion)]], matrix))


def why_html(study: optuna.Study) -> str:
    """The parameters ranked by how well they predict a collapse, each one's trials per value by
    how they ended, and the late-bloomer suspects (:mod:`search.review.why`)."""
    a = attribute(study)
    parts = [f"<p>{html.escape(summary(a))}.</p>", _note(measure_note(a))]
    if a.params and a.total.finished:
        parts.append(_table(RANKING_HEADERS, ranking_rows(a), (1,)))
        for i, p in enumerate(a.params, 1):
            parts += [f"<h3>{i}. {html.escape(p.name)}</h3>", _table(BIN_HEADERS, bin_rows(p))]
    suspects = late_bloomers(study)
    parts += ["<h3>Late-bloomer suspects</h3>", _note(SUSPECTS_NOTE.replace("`", ""))]
    parts.append(_table(SUSPECT_HEADERS, suspect_rows(suspects), (2, 3)) if suspects else _note("none"))
    return "\n".join(parts)


def _parallel(study: optuna.Study) -> str:
    fig = figures.endings_parallel(study)
    return _note("needs a finished trial") if fig is None else _figure(fig, "plot-parallel")


def _importances(study: optuna.Study) -> str:
    n = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    caption = _note(f"Optuna's evaluator, on the {n} completed trials only: pruned trials, among them every "
                    "collapsed one, are not in it (the section above ranks parameters over all of them).")
    return caption + _optuna_figure(study, "importance", optuna.visualization.plot_param_importances, 2,
                                    "needs at least 2 completed trials")


def build_report(study: optuna.Study) -> str:
    """The report of ``study`` as one HTML document."""
    space = stored_space(study)
    metric = space.objective.metric
    params = [p.path for p in space.params]
    summary = summarize_prunes(study, space)
    parts = [
        _section("leaderboard", "Leaderboard", leaderboard(study, params, metric)),
        _section("why", "Why trials ended as they did", why_html(study)),
        _section("history", "Optimisation history", _optuna_figure(
            study, "history", optuna.visualization.plot_optimization_history, 1,
            "needs a completed trial")),
        _section("intermediate", "Intermediate values by state",
                 _figure(figures.intermediate_values(study), "plot-intermediate")),
        _section("importance", "Parameter importances (completed trials)", _importances(study)),
        _section("parallel", "Parallel coordinates of every finished trial", _parallel(study)),
        _section("collapse", "Collapse view", _figure(figures.majority_share(study), "plot-collapse")),
        _section("per-class", "Per-class accuracy of the top trials",
                 _figure(figures.per_class_curves(study), "plot-per-class")),
        _section("prunes", "Prune summary", prune_summary_html(summary)
                 + _figure(figures.prune_reasons(study), "plot-prunes")),
        _section("evidence", "What each pruned trial showed when it was pruned", evidence_html(study)),
    ]
    counts = ", ".join(f"{n} {s.lower()}" for s, n in _counts(study).items() if n)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    title = f"octsearch report: {study.study_name}"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>",
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>',
        "</head><body>", f"<h1>{html.escape(title)}</h1>",
        f"<p>{html.escape(counts or 'no trials')}; objective {html.escape(metric)} "
        f"({html.escape(space.objective.direction)}); written {now}.</p>",
        *([f"<p><strong>{html.escape(tested)}</strong></p>"] if (tested := test_result_line(study)) else []),
        _contents(parts), *parts, "</body></html>",
    ])


def _contents(sections: list[str]) -> str:
    """The table of contents: a link to each section, by its id and title."""
    found = re.findall(r'<section id="([^"]+)">\n<h2>([^<]+)</h2>', "\n".join(sections))
    links = " · ".join(f'<a href="#{section_id}">{title}</a>' for section_id, title in found)
    return f'<nav id="contents">Contents: {links}</nav>'


def _counts(study: optuna.Study) -> dict[str, int]:
    trials = study.get_trials(deepcopy=False)
    return {s.name: sum(t.state == s for t in trials) for s in TrialState}


def write_report(study: optuna.Study, out: str | Path) -> Path:
    out = Path(out)
    text = build_report(study)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as err:
        raise OctsearchError(f"cannot write {str(out)!r}: {err.strerror}") from None
    return out
