"""Self-describing checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint holds what is needed to understand and resume it without the run directory:
model, optimizer and scheduler state, the epoch, the best metric so far, the resolved config and
``class_to_idx``. Only tensors and plain Python values are stored, so the safe loader reads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (already on the CPU) atomically: a crash never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`, read with the safe (weights-only) loader."""
    out: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    return out
