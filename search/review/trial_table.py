"""``octsearch trials``: every trial of a study as a table that fits a terminal, CSV or JSON.

Columns (``--columns``, comma-separated; by key, or a parameter by its path or short name):

=========  ===================================================================================
number     the trial's number
state      COMPLETE, PRUNED, FAIL, RUNNING, WAITING
value      its best objective value so far (headed by the metric's name) ...
epoch      ... and that epoch
epochs     epochs reported
classes    per-class validation accuracy at that epoch, one column per class, headed by its name
params     every searched parameter, one column each (by the last part of its path where unique)
end        how it ended, in one word and the epoch: ``stuck@2``, ``reach@5``, ``RuntimeError``
reason     the whole prune or fail reason
ran_on     host and devices
name       the name of an enqueued trial
=========  ===================================================================================

The table (the default format) shows ``number, state, value, epoch, epochs, classes, params,
end`` and fits :data:`WIDTH` characters: parameter columns that do not fit are left out, last
first, and a line under the table names them. Values are never cut: ``octsearch trial N`` has
the whole reason. CSV and JSON hold every column asked for, with full values.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from octtrain.tracking import json_safe
from search.contract import format_value
from search.errors import OctsearchError
from search.ranking import rank_key
from search.review.leaderboard import TrialRow, short_names, state_counts, study_class_names, trial_row
from search.study import stored_space

WIDTH = 120
KEYS = ("number", "state", "value", "epoch", "epochs", "classes", "params", "end", "reason",
        "ran_on", "name")
DEFAULT = ("number", "state", "value", "epoch", "epochs", "classes", "params", "end")


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[TrialRow], Any]  # the raw value (JSON, CSV); None for none
    param: bool = False  # a parameter's column: left out of the table first
    key: str = ""  # its name in JSON, where not the header


def end_kind(reason: str) -> str:
    """``stuck: 100% ...`` → ``stuck``; ``preempted by SIGTERM ...`` → ``preempted``: the text
    before a colon where it is a short name, else the first word."""
    head, sep, _ = reason.partition(":")
    if sep and 0 < len(head.strip()) <= 20:
        return head.strip()
    return reason.split(maxsplit=1)[0] if reason.strip() else ""


def ended(row: TrialRow) -> str:
    """``kind@epoch`` of a pruned trial (the epoch it was pruned at), the kind of a failed one."""
    kind = end_kind(row.reason)
    if row.state == "PRUNED" and row.epochs > 0:
        return f"{kind or 'pruned'}@{row.epochs - 1}"
    return kind


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _class_accuracy(c: int) -> Callable[[TrialRow], float | None]:
    return lambda r: _number(r.per_class_accuracy[c]) if c < len(r.per_class_accuracy) else None


def _param(path: str) -> Callable[[TrialRow], Any]:
    return lambda r: r.params.get(path)


def columns(study: optuna.Study, rows: Sequence[TrialRow], keys: Sequence[str]) -> list[Column]:
    """The columns of ``keys``, expanded (``classes``, ``params``); an unknown key is an error."""
    space = stored_space(study)
    paths = [p.path for p in space.params]
    names = short_names(paths)
    by_name = {**{names[p]: p for p in paths}, **{p: p for p in paths}}
    labels = study_class_names(study.get_trials(deepcopy=False))
    n_classes = max((len(r.per_class_accuracy) for r in rows), default=0)
    simple: dict[str, Column] = {
        "number": Column("#", lambda r: r.number, key="number"),
        "state": Column("state", lambda r: r.state),
        "value": Column(space.objective.metric, lambda r: _number(r.value)),
        "epoch": Column("epoch", lambda r: r.epoch if r.epoch >= 0 else None),
        "epochs": Column("epochs", lambda r: r.epochs),
        "end": Column("end", ended),
        "reason": Column("reason", lambda r: r.reason),
        "ran_on": Column("ran on", lambda r: r.ran_on),
        "name": Column("name", lambda r: r.enqueued),
    }
    out: list[Column] = []
    for key in keys:
        if key in simple:
            out.append(simple[key])
        elif key == "classes":
            out += [Column(labels.get(c, f"class {c}"), _class_accuracy(c)) for c in range(n_classes)]
        elif key in ("params", *by_name):
            out += [Column(names[p], _param(p), param=True)
                    for p in (paths if key == "params" else [by_name[key]])]
        else:
            raise OctsearchError(f"unknown column {key!r} in --columns: choose from "
                                 f"{', '.join(KEYS)} or a parameter ({', '.join(names.values())})")
    return out


def _text(value: Any) -> str:
    return "-" if value is None or value == "" else format_value(value)


def fit(cols: list[Column], rows: Sequence[TrialRow], width: int) -> tuple[list[Column], list[Column]]:
    """The columns that fit ``width`` (parameters left out, last first) and those left out."""
    shown, left = list(cols), list[Column]()

    def total(cs: list[Column]) -> int:
        return sum(max(len(c.header), *(len(_text(c.value(r))) for r in rows)) for c in cs) \
            + 2 * (len(cs) - 1)

    while total(shown) > width and any(c.param for c in shown):
        last = max(i for i, c in enumerate(shown) if c.param)
        left.insert(0, shown.pop(last))
    return shown, left


def format_trials(study: optuna.Study, *, sort: str = "number", states: Sequence[str] = (),
                  keys: Sequence[str] | None = None, fmt: str = "table", width: int = WIDTH) -> str:
    """The study's trials (``states``: only these, e.g. ``PRUNED``); ``sort="value"``: best first."""
    from search.review.leaderboard import format_table

    unknown = [s for s in states if s.upper() not in TrialState.__members__]
    if unknown:
        raise OctsearchError(f"unknown state {unknown[0]!r} in --state: choose from "
                             f"{', '.join(s.lower() for s in TrialState.__members__)}")
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    rows = [trial_row(t, maximize) for t in study.get_trials(deepcopy=False)
            if not states or t.state.name in {s.upper() for s in states}]
    if sort == "value":
        rows.sort(key=lambda r: rank_key(r.value, r.number, maximize))
    cols = columns(study, rows, keys or DEFAULT)
    if fmt == "json":
        return json.dumps([json_safe({c.key or c.header: c.value(r) for c in cols}) for r in rows], indent=1)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([c.header for c in cols])
        writer.writerows([["" if (v := c.value(r)) is None else v for c in cols] for r in rows])
        return out.getvalue().rstrip("\n")
    shown, left = fit(cols, rows, width) if keys is None else (cols, [])
    table = format_table([c.header for c in shown], [[_text(c.value(r)) for c in shown] for r in rows])
    note = f"\n(not shown to fit {width} columns: {', '.join(c.header for c in left)}; --columns)" if left else ""
    return f"study {study.study_name!r}: {state_counts(study)}\n{table}{note}"
