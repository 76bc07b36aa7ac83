"""Reviewing a study: trial tables, leaderboard and ``export-best`` (``leaderboard``), plotly
figures (``figures``), the HTML report (``html_report``, ``prune_summary``), dashboard notes and
figures (``notes``, ``dashboard``), run files as artifacts (``artifacts``), what the worker writes
for review at a trial's end (``evidence``) and ``octsearch finalize`` (``finalize``).
"""

from __future__ import annotations

from search.review.artifacts import default_artifacts_dir
from search.review.dashboard import serve
from search.review.finalize import FinalizeOptions, finalize
from search.review.html_report import write_report
from search.review.leaderboard import (
    describe_trial,
    export_best,
    format_best,
    format_leaderboard,
    format_trials,
    format_value,
)

__all__ = [
    "FinalizeOptions",
    "default_artifacts_dir",
    "describe_trial",
    "export_best",
    "finalize",
    "format_best",
    "format_leaderboard",
    "format_trials",
    "format_value",
    "serve",
    "write_report",
]
