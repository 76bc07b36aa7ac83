"""Reviewing a study: the trials table (``trial_table``), one trial (``trial_detail``),
leaderboard and ``export-best`` (``leaderboard``), plotly figures (``figures``), the HTML report
(``html_report``, ``prune_summary``), dashboard notes and figures (``notes``, ``dashboard``), run
files as artifacts (``artifacts``), what the worker writes for review at a trial's end
(``evidence``), ``octsearch finalize`` (``finalize``), ``octsearch why`` (``why``: which
parameters predict a collapse, ``attribution``; pruned trials that may have bloomed late,
``late_bloomers``), how sure a score is (``uncertainty``, ties with the best), the stored test
result (``test_result``) and two trials side by side (``compare``).
"""

from __future__ import annotations

from search.review.artifacts import default_artifacts_dir
from search.review.compare import format_compare
from search.review.dashboard import serve
from search.review.evidence import ReviewEvidence
from search.review.finalize import FinalizeOptions, finalize
from search.review.html_report import write_report
from search.review.leaderboard import (
    export_best,
    format_best,
    format_leaderboard,
)
from search.review.trial_detail import format_trial
from search.review.trial_table import format_trials
from search.review.why import format_why

__all__ = [
    "FinalizeOptions",
    "ReviewEvidence",
    "default_artifacts_dir",
    "export_best",
    "finalize",
    "format_best",
    "format_compare",
    "format_leaderboard",
    "format_trial",
    "format_trials",
    "format_why",
    "serve",
    "write_report",
]
