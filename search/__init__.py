"""octsearch: Optuna search over octtrain configs, with collapse-aware pruning.

The ``octsearch`` command is :func:`search.cli.main`; these are the pieces it is made of.
"""

from __future__ import annotations

from search.errors import OctsearchError, SearchSpaceError, StorageError, WorkerError
from search.pruning import (
    CollapsePruner,
    EpochEvidence,
    ExplainingPruner,
    collapse_reason,
    effective_grace,
    prune_reason,
    stuck_reason,
)
from search.space import SearchSpace, diff_spaces, load_space, space_from_dict
from search.storage import DEFAULT_STORAGE, open_storage
from search.study import load_review_study, open_study
from search.trial import EpochReporter
from search.worker import WorkerOptions, run_worker

__all__ = [
    "DEFAULT_STORAGE",
    "CollapsePruner",
    "EpochEvidence",
    "EpochReporter",
    "ExplainingPruner",
    "OctsearchError",
    "SearchSpace",
    "SearchSpaceError",
    "StorageError",
    "WorkerError",
    "WorkerOptions",
    "collapse_reason",
    "diff_spaces",
    "effective_grace",
    "load_review_study",
    "load_space",
    "open_storage",
    "open_study",
    "prune_reason",
    "run_worker",
    "space_from_dict",
    "stuck_reason",
]
