"""Where a run's numbers go: ``metrics.jsonl`` and W&B (``tracker``), and one W&B run with its
name, group, params and tables, and a summary added to it later (``wandb_run``).
"""

from __future__ import annotations

from octtrain.tracking.tracker import Tracker, json_safe
from octtrain.tracking.wandb_run import add_to_run

__all__ = [
    "Tracker",
    "add_to_run",
    "json_safe",
]
