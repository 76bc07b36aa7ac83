"""Training: ``fit`` and its epoch loop (``loop``), one epoch (``epoch``), loss, optimizer, metrics,
early stopping, checkpoints, the resume checkpoint, progress output, startup cost, and a checkpoint
evaluated once on the test split (``evaluate``).
"""

from __future__ import annotations

from octtrain.train.early_stop import is_improvement
from octtrain.train.evaluate import evaluate_checkpoint
from octtrain.train.loop import FitResult, default_run_dir, fit, run_files_in
from octtrain.train.resume import RESUME_FILE

__all__ = [
    "FitResult",
    "RESUME_FILE",
    "default_run_dir",
    "evaluate_checkpoint",
    "fit",
    "is_improvement",
    "run_files_in",
]
