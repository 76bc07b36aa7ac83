"""Where a run's numbers go: ``metrics.jsonl`` and W&B (``tracker``), and one W&B run with its
name, group, params and tables (``wandb_run``).
"""

from __future__ import annotations

from octtrain.tracking.tracker import Tracker, json_safe

__all__ = [
    "Tracker",
    "json_safe",
]
