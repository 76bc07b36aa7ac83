"""A study: created or joined for a space, or opened for review (``join``), and the rule that keeps
exactly N finished trials however many workers ask at once (``counting``), and a trial's
configuration queued again to run unpruned (``rerun``).
"""

from __future__ import annotations

from search.study.counting import FINISHED, Step, count_trials, keep_or_put_back, next_step
from search.study.join import load_review_study, open_study, stored_space
from search.study.rerun import enqueue_rerun, rerun_attrs

__all__ = [
    "FINISHED",
    "Step",
    "count_trials",
    "enqueue_rerun",
    "keep_or_put_back",
    "load_review_study",
    "next_step",
    "open_study",
    "rerun_attrs",
    "stored_space",
]
