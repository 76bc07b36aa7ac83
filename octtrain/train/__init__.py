"""Training: ``fit`` and its epoch loop (``loop``), one epoch (``epoch``), loss, optimizer, metrics,
early stopping, checkpoints, the resume checkpoint, the run directory's files (``run_dir``),
progress output, startup cost, and a checkpoint evaluated once on the test split (``evaluate``).

``fit``, ``FitResult`` and ``evaluate_checkpoint`` are imported on first use: a search worker and
its trial processes need only the improvement rule and the run directory's file names, without
loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from octtrain.lazy import on_first_use
from octtrain.train.early_stop import is_improvement
from octtrain.train.run_dir import RESUME_FILE, default_run_dir, run_files_in

if TYPE_CHECKING:
    from octtrain.train.evaluate import evaluate_checkpoint
    from octtrain.train.loop import FitResult, fit

__all__ = [
    "FitResult",
    "RESUME_FILE",
    "default_run_dir",
    "evaluate_checkpoint",
    "fit",
    "is_improvement",
    "run_files_in",
]

__getattr__ = on_first_use(__name__, {"FitResult": "loop", "fit": "loop", "evaluate_checkpoint": "evaluate"})
