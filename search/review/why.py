"""``octsearch why``: why the trials of a study ended as they did, as text, markdown and table rows.

Two parts, both over every trial that ended (:mod:`search.review.attribution`,
:mod:`search.review.late_bloomers`): the parameters ranked by how well they predict a collapse,
each with its trials per value (bin) by ending, and the late-bloomer suspects. The rows are built
once here (:func:`ranking_rows`, :func:`bin_rows`, :func:`suspect_rows`) and drawn as fixed-width
text for the terminal (:func:`format_why`, lines of at most 120 characters), as markdown for the
dashboard's study note (:func:`why_markdown`) and as HTML tables by the report.
"""

from __future__ import annotations

import math
import textwrap

import optuna

from octtrain.errors import clip
from search.pruning import COLLAPSE_KIND, DIVERGED_KIND
from search.review.attribution import Attribution, Counts, Ending, ParamAttribution, attribute
from search.review.late_bloomers import Suspect, late_bloomers

WIDTH = 120
RANKING_HEADERS = ["#", "parameter", "gain (bits)", "of H", "adjusted", "p", "trials"]
BIN_HEADERS = ["value", "trials", "collapsed", "pruned", "complete", "failed"]
SUSPECT_HEADERS = ["trial", "pruned at", "by", "why a suspect", "rerun as"]
KIND_WORDS = {COLLAPSE_KIND: "the collapse rule", DIVERGED_KIND: "a diverged loss"}


def _share(counts: Counts, e: Ending) -> str:
    share = counts.share(e)
    return f"{counts.by[e]} ({'-' if math.isnan(share) else f'{share:.0%}'})"


def summary(a: Attribution) -> str:
    """``6 finished trials: 3 collapsed (50%), 1 pruned by the inner rule (17%), 2 complete (33%); 1 failed``."""
    t = a.total
    text = (f"{t.finished} finished trials: {_share(t, Ending.COLLAPSED)} collapsed, {_share(t, Ending.PRUNED)} "
            f"pruned by the inner rule or a diverged loss, {_share(t, Ending.COMPLETE)} complete")
    return text + f"; {t.by[Ending.FAILED]} failed (in no share)"


def measure_note(a: Attribution) -> str:
    """What the ranking measures, or why there is nothing to rank."""
    if not a.total.finished:
        return "No trial has finished yet."
    if a.entropy == 0:
        what = "no" if not a.total.by[Ending.COLLAPSED] else "every"
        return f"{what.capitalize()} finished trial collapsed: no parameter can tell collapsed trials apart."
    return (f"Parameters ranked by how well they predict a collapse: the information gain of each parameter's "
            f"value (bin) on collapsed vs not, in bits, of H = {a.entropy:.2f} bits (the outcome's entropy: a "
            "parameter at 100% separates collapsed trials on its own), less what as many bins gain by chance "
            "(adjusted); p: the G-test's p-value (approximate on few trials).")


def _p(p: float) -> str:
    return "-" if math.isnan(p) else f"{p:.2g}"


def ranking_rows(a: Attribution) -> list[list[str]]:
    return [[str(i), p.name, f"{p.gain:.3f}", f"{p.gain / a.entropy:.0%}" if a.entropy else "-",
             f"{p.adjusted:.3f}", _p(p.p_value), str(p.n)] for i, p in enumerate(a.params, 1)]


def bin_rows(p: ParamAttribution) -> list[list[str]]:
    return [[label, str(c.finished), _share(c, Ending.COLLAPSED), _share(c, Ending.PRUNED),
             _share(c, Ending.COMPLETE), str(c.by[Ending.FAILED])] for label, c in p.bins]


def suspect_rows(suspects: list[Suspect]) -> list[list[str]]:
    return [[str(s.number), f"epoch {s.epoch}", KIND_WORDS.get(s.kind, "the inner rule"), "; ".join(s.why),
             ", ".join(map(str, s.reruns)) or "-"] for s in suspects]


SUSPECTS_NOTE = ("Late-bloomer suspects: pruned trials whose validation or training balanced accuracy was still "
                 "rising, or that were pruned within 2 epochs of their unfreeze epoch. `octsearch rerun N` queues "
                 "trial N's configuration again, to run its whole budget without pruning.")


def _columns(headers: list[str], rows: list[list[str]], indent: str, left: int = 1) -> list[str]:
    """Fixed-width columns, the first ``left`` left-aligned, each line clipped to WIDTH."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for r in [headers, *rows]:
        cells = [r[i].ljust(w) if i < left else r[i].rjust(w) for i, w in enumerate(widths)]
        lines.append(clip(indent + "  ".join(cells).rstrip(), WIDTH))
    return lines


def _wrap(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=indent, subsequent_indent=indent)


def format_why(study: optuna.Study) -> str:
    """The ranking, each parameter's trials per bin, then the late-bloomer suspects; lines of at
    most :data:`WIDTH` characters."""
    a = attribute(study)
    lines = _wrap(f"study {study.study_name!r}: {summary(a)}") + [""] + _wrap(measure_note(a))
    if a.params and a.total.finished:
        lines += [""] + _columns(RANKING_HEADERS, ranking_rows(a), "  ", left=2)
        for i, p in enumerate(a.params, 1):
            lines += ["", clip(f"{i}. {p.name}", WIDTH)] + _columns(BIN_HEADERS, bin_rows(p), "     ")
    suspects = late_bloomers(study)
    lines += [""] + _wrap(SUSPECTS_NOTE.replace("`", ""))
    if not suspects:
        return "\n".join([*lines, "  none"])
    for s, row in zip(suspects, suspect_rows(suspects), strict=True):
        rerun = f"; rerun as trial {row[4]}" if s.reruns else ""
        lines += _wrap(f"trial {s.number}, pruned at epoch {s.epoch} by {row[2]}: {row[3]}{rerun}", "  ")
        lines.append(clip(f"    {s.reason}", WIDTH))
    lines.append(clip(f"Run one again without pruning: octsearch rerun N --study {study.study_name} "
                      "(and the same --storage)", WIDTH))
    return "\n".join(lines)


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    return [line(headers), "|" + "---|" * len(headers), *(line(r) for r in rows)]


def why_markdown(study: optuna.Study) -> str:
    """The same as :func:`format_why`, as markdown (the dashboard's study note)."""
    a = attribute(study)
    lines = ["## Why trials ended as they did", "", f"{summary(a)}.", "", measure_note(a), ""]
    if a.params and a.total.finished:
        lines += _md_table(RANKING_HEADERS, ranking_rows(a))
        for i, p in enumerate(a.params, 1):
            lines += ["", f"### {i}. {p.name}", ""] + _md_table(BIN_HEADERS, bin_rows(p))
    suspects = late_bloomers(study)
    lines += ["", "## Late-bloomer suspects", "", SUSPECTS_NOTE, ""]
    lines += _md_table(SUSPECT_HEADERS, suspect_rows(suspects)) if suspects else ["None."]
    return "\n".join(lines) + "\n"
