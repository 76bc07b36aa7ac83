"""Pruning: the collapse rule as pure functions over each epoch's evidence (``collapse``) and the
``CollapsePruner`` with the ``ExplainingPruner`` protocol, reasons for Optuna's own pruners and
which rule a reason came from (``pruner``), and the reach rule, the default inner pruner (``reach``).
"""

from __future__ import annotations

from search.pruning.collapse import (
    EpochEvidence,
    Thresholds,
    collapse_reason,
    collapsed,
    effective_grace,
    stuck_reason,
)
from search.pruning.pruner import (
    COLLAPSE_KIND,
    DIVERGED_KIND,
    INNER_KIND,
    CollapsePruner,
    ExplainingPruner,
    prune_kind,
    prune_reason,
)
from search.pruning.reach import Reach, ReachPruner, reach, resolution

__all__ = [
    "COLLAPSE_KIND",
    "DIVERGED_KIND",
    "INNER_KIND",
    "CollapsePruner",
    "EpochEvidence",
    "ExplainingPruner",
    "Reach",
    "ReachPruner",
    "Thresholds",
    "collapse_reason",
    "collapsed",
    "effective_grace",
    "prune_kind",
    "prune_reason",
    "reach",
    "resolution",
    "stuck_reason",
]
