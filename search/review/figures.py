"""Plotly figures of a study that Optuna does not draw: the evidence of collapse and pruning.

Each function reads only what the study stores (:mod:`search.contract`), so it works on a study
that is still running and on one reviewed from another host. The HTML report
(:mod:`search.review.html_report`) and the dashboard's study figures (:mod:`search.review.notes`) share them.
Epochs are Optuna steps (0-based).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.contract import end_reason, format_value, stored_epochs, stored_run_dir
from search.ranking import best_step
from search.review.attribution import FINISHED, ending

STATE_COLORS = {"COMPLETE": "#2ca02c", "PRUNED": "#ff7f0e", "FAIL": "#d62728",
                "RUNNING": "#1f77b4", "WAITING": "#7f7f7f"}
CLASS_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                "#bcbd22")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


TEMPLATE = "plotly_white"  # every figure of the report and the dashboard, Optuna's included


def integer_ticks(fig: go.Figure, axis: str = "x") -> go.Figure:
    """Ticks on whole numbers only (epochs, trial numbers, counts), about ten of them: plotly's
    automatic ticks put 0.5 steps on a short axis."""
    values = [v for trace in fig.data for v in (getattr(trace, axis, None) or ())
              if isinstance(v, (int, float))]
    top = max(values, default=0)
    step = max(1, -(-int(top) // 10))
    fig.update_layout({f"{axis}axis": {"tick0": 0, "dtick": step, "tickformat": "d"}})
    return fig


def _layout(fig: go.Figure, title: str, y_title: str, x_title: str = "epoch") -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x_title, yaxis_title=y_title,
                      template=TEMPLATE, legend_title_text="")
    if x_title == "epoch":
        integer_ticks(fig, "x")
    return fig


def _state_lines(study: optuna.Study, title: str, y_title: str,
                 value_of: Any) -> go.Figure:
    """One line per trial over its epochs, coloured by state, one legend entry per state."""
    fig = go.Figure()
    shown: set[str] = set()
    for trial in study.get_trials(deepcopy=False):
        points = [(e, value_of(trial, e, m)) for e, m in _epoch_points(trial)]
        points = [(e, v) for e, v in points if v is not None]
        if not points:
            continue
        state = trial.state.name
        fig.add_trace(go.Scatter(
            x=[e for e, _ in points], y=[v for _, v in points], mode="lines+markers",
            name=state, legendgroup=state, showlegend=state not in shown,
            line={"color": STATE_COLORS.get(state, "#7f7f7f")},
            hovertemplate=f"trial {trial.number} ({state})<br>epoch %{{x}}: %{{y:.3f}}<extra></extra>",
        ))
        shown.add(state)
    return _layout(fig, title, y_title)


def _epoch_points(trial: FrozenTrial) -> list[tuple[int, dict[str, Any]]]:
    """Stored epochs; a trial stored without epoch metrics gives its intermediate values."""
    epochs = stored_epochs(trial)
    if epochs:
        return epochs
    return [(step, {"_value": value}) for step, value in sorted(trial.intermediate_values.items())]


def intermediate_values(study: optuna.Study) -> go.Figure:
    """The reported objective of every trial per epoch, coloured by state."""
    def value(trial: FrozenTrial, epoch: int, _: dict[str, Any]) -> float | None:
        v = trial.intermediate_values.get(epoch)
        return None if v is None or math.isnan(v) else float(v)

    return _state_lines(study, "Intermediate values (objective per epoch, by state)", "objective",
                        value)


def majority_share(study: optuna.Study) -> go.Figure:
    """Share of validation predictions in the most-predicted class per epoch, every trial:
    a collapsed trial sits near 1.0."""
    def share(_: FrozenTrial, __: int, metrics: dict[str, Any]) -> float | None:
        v = metrics.get("val/max_class_share")
        return float(v) if isinstance(v, (int, float)) else None

    fig = _state_lines(study, "Collapse view: majority-class share of validation predictions",
                       "majority share", share)
    fig.update_yaxes(range=[0, 1.05])
    return fig


def top_trials(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The ``top`` trials by their best value so far (any state but FAIL), best first."""
    maximize = study.direction == StudyDirection.MAXIMIZE
    scored = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.FAIL:
            continue
        value = t.value if t.state == TrialState.COMPLETE and t.value is not None \
            else best_step(t.intermediate_values, maximize)[0]
        if not math.isnan(value):
            scored.append((-value if maximize else value, t.number, t))
    return [t for *_, t in sorted(scored, key=lambda s: (s[0], s[1]))[:top]]


def per_class_curves(study: optuna.Study, top: int = 3,
                     names: dict[int, str] | None = None) -> go.Figure:
    """Per-class validation accuracy (recall; their mean is balanced accuracy) per epoch of the
    ``top`` trials: colour is the class, dash the trial."""
    from search.review.leaderboard import class_names

    fig = go.Figure()
    for rank, trial in enumerate(top_trials(study, top)):
        labels = names or class_names(stored_run_dir(trial))
        epochs = stored_epochs(trial)
        n_classes = max((len(m.get("val/per_class_accuracy") or []) for _, m in epochs), default=0)
        for c in range(n_classes):
            xs, ys = [], []
            for e, m in epochs:
                acc = (m.get("val/per_class_accuracy") or [None] * n_classes)[c]
                if isinstance(acc, (int, float)):
                    xs.append(e)
                    ys.append(float(acc))
            label = labels.get(c, str(c))
            fig.add_trace(go.Scatter(
                x=xs, y=ys, mode="lines+markers", name=f"trial {trial.number}: {label}",
                line={"color": CLASS_COLORS[c % len(CLASS_COLORS)], "dash": DASHES[rank % len(DASHES)]},
            ))
    fig.update_yaxes(range=[0, 1.05])
    return _layout(fig, f"Per-class validation accuracy of the top {top} trials", "class accuracy")


def reason_kind(reason: str) -> str:
    """``stuck: 100% ...`` → ``stuck``; a reason without a ``kind:`` prefix is ``other``."""
    head, sep, _ = reason.partition(":")
    return head.strip() if sep and head.strip() and " " not in head.strip() else "other"


def prune_epochs(study: optuna.Study) -> list[tuple[FrozenTrial, int, str]]:
    """(trial, epoch it was pruned at, reason kind) of every PRUNED trial."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        steps = list(t.intermediate_values)
        out.append((t, max(steps) if steps else -1, reason_kind(end_reason(t))))
    return out


def prune_reasons(study: optuna.Study) -> go.Figure:
    """How many trials were pruned at each epoch, stacked by the kind of reason."""
    counts = Counter((epoch, kind) for _, epoch, kind in prune_epochs(study))
    fig = go.Figure()
    for kind in sorted({k for _, k in counts}):
        epochs = sorted(e for e, k in counts if k == kind)
        fig.add_trace(go.Bar(x=epochs, y=[counts[(e, kind)] for e in epochs], name=kind))
    fig.update_layout(barmode="stack")
    integer_ticks(fig, "y")
    return _layout(fig, "Prune reasons by epoch", "trials pruned")


ENDING_COLORS = {"collapsed": "#d62728", "pruned": "#ff7f0e", "complete": "#2ca02c"}


def _axis(label: str, values: list[Any], log: bool) -> dict[str, Any]:
    """A parcoords dimension of ``values`` (``None``: not set): categories by position, numbers as
    they are (log10 on a log scale); a trial without the value sits on a ``(not set)`` tick below."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values if v is not None)
    if not numeric:
        names = list(dict.fromkeys(format_value(v) for v in values if v is not None))
        if any(v is None for v in values):
            names.append("(not set)")
        pos = [names.index("(not set)" if v is None else format_value(v)) for v in values]
        return {"label": label, "values": pos, "tickvals": list(range(len(names))), "ticktext": names}
    log = log and all(v > 0 for v in values if v is not None)
    shown = [None if v is None else math.log10(v) if log else float(v) for v in values]
    known = [v for v in shown if v is not None]
    lo, hi = (min(known), max(known)) if known else (0.0, 1.0)
    below = lo - 0.1 * (hi - lo or 1.0)
    ticks = sorted(set(known))[:: max(1, len(set(known)) // 5)]
    axis = {"label": label + (" (log10)" if log else ""), "values": [below if v is None else v for v in shown]}
    if any(v is None for v in values):
        axis |= {"tickvals": [below, *ticks], "ticktext": ["(not set)", *(f"{t:.3g}" for t in ticks)]}
    return axis


def endings_parallel(study: optuna.Study) -> go.Figure | None:
    """Parallel coordinates of every finished trial (complete and pruned): one axis per parameter,
    its best value, and how it ended, coloured by that (collapsed, pruned, complete); ``None``
    before any trial finished."""
    maximize = study.direction == StudyDirection.MAXIMIZE
    trials = [(t, e) for t in study.get_trials(deepcopy=False) if (e := ending(t)) in FINISHED]
    if not trials:
        return None
    names = list(dict.fromkeys(n for t, _ in trials for n in t.params))
    dims = []
    for name in names:
        dist = next(t.distributions[name] for t, _ in trials if name in t.distributions)
        dims.append(_axis(name, [t.params.get(name) for t, _ in trials],
                          isinstance(dist, FloatDistribution) and dist.log))
    best = [t.value if t.value is not None else best_step(t.intermediate_values, maximize)[0] for t, _ in trials]
    dims.append({"label": "best value", "values": best})
    codes = [FINISHED.index(e) for _, e in trials]
    dims.append({"label": "ended", "values": codes, "tickvals": [0, 1, 2], "ticktext": [e.value for e in FINISHED]})
    colors = [ENDING_COLORS[e.value] for e in FINISHED]
    scale = [[0.0, colors[0]], [0.33, colors[0]], [0.33, colors[1]], [0.67, colors[1]], [0.67, colors[2]],
             [1.0, colors[2]]]
    fig = go.Figure(go.Parcoords(line={"color": codes, "colorscale": scale, "cmin": 0, "cmax": 2},
                                 dimensions=dims))
    fig.update_layout(title=f"Every finished trial ({len(trials)}) by how it ended: red collapsed, orange pruned "
                            "otherwise, green complete", template=TEMPLATE)
    return fig
