"""Pruning: the collapse rule as pure functions over each epoch's evidence (``collapse``) and the
``CollapsePruner`` with the ``ExplainingPruner`` protocol and reasons for Optuna's own pruners
(``pruner``).
"""

from __future__ import annotations

from search.pruning.collapse import EpochEvidence, collapse_reason, effective_grace, stuck_reason
from search.pruning.pruner import CollapsePruner, ExplainingPruner, prune_reason

__all__ = [
    "CollapsePruner",
    "EpochEvidence",
    "ExplainingPruner",
    "collapse_reason",
    "effective_grace",
    "prune_reason",
    "stuck_reason",
]
