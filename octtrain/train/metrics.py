"""Classification metrics from confusion counts.

:func:`confusion_counts` builds the counts on the device, inside the step; everything else is
derived on the host from a ``(C, C)`` confusion matrix of counts (rows: true class, columns:
predicted class). Counts are the only thing ranks exchange in distributed validation: sums of
counts are exact, whereas averaging per-rank means is wrong when ranks see different numbers of
samples of each class.

NaN handling: a class with no true sample has undefined recall; it is left out of balanced
accuracy (as scikit-learn does) and its per-class accuracy is NaN. An empty matrix gives NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def confusion_counts(targets: torch.Tensor, preds: torch.Tensor, num_classes: int,
                     valid: torch.Tensor | None = None) -> torch.Tensor:
    """``(C, C)`` float counts on the device via one-hot products: a static-shape op (bincount
    is not on XLA). ``valid`` (0 or 1 per sample) masks padding out. Float32 counts are exact up
    to 2**24 samples."""
    t = F.one_hot(targets, num_classes).float()  # (B, C)
    if valid is not None:
        t = t * valid.float().unsqueeze(1)
    return t.T @ F.one_hot(preds, num_classes).float()  # (C, C)


def confusion_from_predictions(targets: Any, preds: Any, num_classes: int) -> np.ndarray:
    """``(C, C)`` int64 counts; ``targets``/``preds`` are 1-D integer arrays."""
    t = np.asarray(targets, dtype=np.int64).ravel()
    p = np.asarray(preds, dtype=np.int64).ravel()
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.maximum(den, 1), np.nan)


def per_class_recall(confusion: np.ndarray) -> np.ndarray:
    """Per-class accuracy (recall); NaN for a class with no true sample."""
    cm = np.asarray(confusion, dtype=np.float64)
    return _safe_div(np.diag(cm), cm.sum(axis=1))


def per_class_f1(confusion: np.ndarray) -> np.ndarray:
    """Per-class F1; 0 where a class is neither true nor predicted correctly (sklearn's zero_division=0)."""
    cm = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(cm)
    denom = cm.sum(axis=0) + cm.sum(axis=1)  # 2TP + FP + FN
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def balanced_accuracy(confusion: np.ndarray) -> float:
    """Mean recall over the classes present in the targets; NaN for an empty matrix."""
    recall = per_class_recall(confusion)
    present = ~np.isnan(recall)
    return float(recall[present].mean()) if present.any() else math.nan


def macro_f1(confusion: np.ndarray) -> float:
    """Mean F1 over classes present in targets or predictions; NaN for an empty matrix."""
    cm = np.asarray(confusion)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(per_class_f1(cm)[present].mean()) if present.any() else math.nan


def accuracy(confusion: np.ndarray) -> float:
    cm = np.asarray(confusion)
    total = cm.sum()
    return float(np.trace(cm) / total) if total else math.nan


def prediction_entropy(pred_hist: np.ndarray) -> float:
    """Entropy (nats) of the predicted-class distribution: 0 when one class is always predicted,
    ``log C`` when predictions are uniform. NaN when there are no predictions."""
    h = np.asarray(pred_hist, dtype=np.float64)
    total = h.sum()
    if total == 0:
        return math.nan
    p = h[h > 0] / total
    return float(-(p * np.log(p)).sum())


def summarize(confusion: np.ndarray, prefix: str) -> dict[str, Any]:
    """All metrics of one split as a flat, JSON-ready dict with keys ``{prefix}/<name>``."""
    cm = np.asarray(confusion, dtype=np.int64)
    pred_hist = cm.sum(axis=0)
    total = int(pred_hist.sum())
    return {
        f"{prefix}/accuracy": accuracy(cm),
        f"{prefix}/balanced_accuracy": balanced_accuracy(cm),
        f"{prefix}/macro_f1": macro_f1(cm),
        f"{prefix}/per_class_accuracy": [float(x) for x in per_class_recall(cm)],
        f"{prefix}/per_class_f1": [float(x) for x in per_class_f1(cm)],
        f"{prefix}/confusion": cm.tolist(),
        f"{prefix}/pred_hist": [int(x) for x in pred_hist],
        f"{prefix}/pred_entropy": prediction_entropy(pred_hist),
        f"{prefix}/max_class_share": float(pred_hist.max() / total) if total else math.nan,
        f"{prefix}/majority_class": int(pred_hist.argmax()),
        f"{prefix}/count": total,
    }
