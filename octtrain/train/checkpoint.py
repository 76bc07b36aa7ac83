"""Self-describing checkpoints that load with ``torch.load(weights_only=True)``.

A checkpoint holds what is needed to understand and resume it without the run directory:
model, optimizer and scheduler state, the epoch, the best metric so far, the resolved config and
``class_to_idx``. Only tensors and plain Python values are stored, so the safe loader reads it.
A run keeps two (:class:`Checkpointer`): ``last.pt`` after every epoch, ``best.pt`` after the
best one; ``best.pt`` leaves the optimizer's state out (it is read for evaluation and export,
and a search keeps it for its top trials; a stopped run resumes from ``resume.pt``,
:mod:`octtrain.train.resume`).
Only what changes is stored: the head always, the encoder only once it has been trained. A frozen
encoder holds its initial weights, which :func:`octtrain.model.classifier.build_model` rebuilds from the
config (the ``tiny`` one under ``torch.manual_seed(train.seed)``, as training builds it), so
``"encoder_saved": False`` checkpoints leave the ``encoder.`` entries out and
:func:`load_model_state` keeps the rebuilt ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from octtrain.files import atomic_path
from octtrain.runtime import Runtime

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any], what: str = "a checkpoint") -> None:
    """Write ``state`` (already on the CPU) atomically: a crash never leaves half a file, a
    write the host fails (full disk, ...) leaves the old file and raises one HostError naming
    ``what`` and ``path``."""
    # Through a Python file, not torch.save(obj, path): torch's own writer reports a failed
    # write as a RuntimeError without errno ("file write failed"); through a file, the write's
    # OSError (ENOSPC, EDQUOT, ...) is what torch's error was raised while handling.
    with atomic_path(path, what) as tmp, open(tmp, "wb") as file:
        torch.save({"format_version": FORMAT_VERSION, **state}, file)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`, read with the safe (weights-only) loader."""
    out: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    return out


ENCODER_PREFIX = "encoder."


def model_state(model: torch.nn.Module, runtime: Runtime, with_encoder: bool) -> dict[str, Any]:
    """The model's state on the CPU, without the ``encoder.`` entries unless ``with_encoder``."""
    state = model.state_dict()
    if not with_encoder:
        state = type(state)((k, v) for k, v in state.items() if not k.startswith(ENCODER_PREFIX))
    out: dict[str, Any] = runtime.to_cpu(state)
    return out


def load_model_state(model: torch.nn.Module, state: Mapping[str, Any]) -> None:
    """Load a checkpoint's ``model`` into a freshly built ``model``: a head-only checkpoint
    (``encoder_saved`` False) keeps the rebuilt encoder; anything else missing is an error."""
    weights = state["model"]
    if state.get("encoder_saved", True):
        model.load_state_dict(weights)
        return
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(ENCODER_PREFIX)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"checkpoint does not match the model: missing {missing}, "
                           f"unexpected {result.unexpected_keys}")


BEST_LEAVES_OUT = ("optimizer",)  # best.pt is read for its weights; resume.pt resumes a run


class Checkpointer:
    """Writes a run's ``last.pt`` after every epoch and ``best.pt`` after the best one, without
    the optimizer's state (:data:`BEST_LEAVES_OUT`)."""

    def __init__(self, run_dir: Path, config: dict[str, Any], class_to_idx: Mapping[str, int],
                 metric: str) -> None:
        self.run_dir = run_dir
        self.config = config  # TrainConfig.to_dict(): the checkpoint says how it was trained
        self.class_to_idx = dict(class_to_idx)
        self.metric = metric  # the one that picks the best epoch
        self.encoder_trained = False  # sticky: once trained, the encoder differs from its init

    def save(self, runtime: Runtime, epoch: int, model: torch.nn.Module,
             optimizer: torch.optim.Optimizer, scheduler: Any, metrics: Mapping[str, Any],
             is_best: bool) -> None:
        """Write this epoch's state (copied to the CPU); ``metrics`` hold ``best/...``."""
        best_value = metrics["best/value"]
        self.encoder_trained = self.encoder_trained or bool(getattr(model, "encoder_trainable", True))
        state = {
            "model": model_state(model, runtime, self.encoder_trained),
            "encoder_saved": self.encoder_trained,
            "optimizer": runtime.to_cpu(optimizer.state_dict()),
            "scheduler": {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"},
            "epoch": epoch,
            "best_metric": self.metric,
            "best_value": best_value if best_value is not None else math.nan,
            "best_epoch": metrics["best/epoch"],
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, bool))},
            "config": self.config,
            "class_to_idx": dict(self.class_to_idx),
        }
        save_checkpoint(self.run_dir / "last.pt", state, "the last checkpoint")
        if is_best:  # for evaluation and export: AdamW's state (twice the trained weights) stays out
            save_checkpoint(self.run_dir / "best.pt", {k: v for k, v in state.items()
                                                       if k not in BEST_LEAVES_OUT},
                            "the best checkpoint")
