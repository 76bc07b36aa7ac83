"""Evaluating a trained run once on a held-out split (the test split, by default).

The checkpoint describes itself (config, ``class_to_idx``, weights), so the split is rebuilt
exactly as the run saw it: the same manifest, fractions and seed give the same patients, and the
run's class numbering is kept. One process, no augmentation, every volume counted once (padding
masked out), with the metrics of :func:`octtrain.train.metrics.summarize` under ``test/``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from octtrain.config import RuntimeSection, config_from_dict
from octtrain.data import PaddedDataset, build_datasets
from octtrain.errors import DataError
from octtrain.model import build_model
from octtrain.runtime import init_runtime
from octtrain.train.checkpoint import load_checkpoint, load_model_state
from octtrain.train.epoch import validate
from octtrain.train.progress import ProgressBar


def evaluate_checkpoint(checkpoint: str | Path, split: str = "test", *, device: str | None = None,
                        progress: bool = False) -> dict[str, Any]:
    """Metrics of the checkpoint's model on ``split`` of its own data config, keys ``SPLIT/...``
    (accuracy, balanced accuracy, macro-F1, per-class accuracy and F1, confusion matrix,
    prediction histogram, loss) plus ``SPLIT/volumes``. A DataError when the split is empty."""
    state = load_checkpoint(checkpoint)
    cfg = config_from_dict(state["config"], source=str(checkpoint))
    splits = build_datasets(cfg.data, augment_train=False, class_to_idx=state["class_to_idx"])
    dataset = getattr(splits, split)
    if len(dataset) == 0:
        raise DataError(f"the {split} split of {cfg.data.manifest or cfg.data.root} is empty: "
                        f"set data.{split}_fraction > 0 (or {split} rows in the manifest)")
    runtime = init_runtime(RuntimeSection(device=device or cfg.runtime.device))
    torch.manual_seed(cfg.train.seed)  # a head-only checkpoint's encoder is rebuilt as trained
    model = build_model(cfg.model, *cfg.data.shape, splits.num_classes)
    load_model_state(model, state)
    model.to(runtime.device)
    batch = cfg.train.batch_size
    loader = DataLoader(PaddedDataset(dataset, batch), batch_size=batch, shuffle=False)
    bar = ProgressBar(len(loader), f"{split}", enabled=progress)
    metrics = validate(model, loader, runtime, bar)
    out = {f"{split}/{key.split('/', 1)[1]}": value for key, value in metrics.items()}
    out[f"{split}/volumes"] = len(dataset)
    out[f"{split}/checkpoint_epoch"] = int(state["epoch"])
    return {k: (math.nan if v is None else v) for k, v in out.items()}
