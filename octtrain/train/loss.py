"""Class-weighted cross-entropy with label smoothing, and the class weights it uses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from octtrain.errors import ConfigError, DataError


def cross_entropy_with_smoothing(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor | None = None,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Class-weighted CE with label smoothing, each sample weighted by its true class.

    The target distribution puts ``1 - smoothing`` on the true class and
    ``smoothing / (C - 1)`` on each other class. Each sample's loss is multiplied by
    ``weight[target]`` and the batch is reduced by a plain mean over samples.

    Why not ``F.cross_entropy(weight=w)``: its mean reduction divides by the *sum of the batch's
    weights*, so with one sample per micro-batch (batch size 1 + gradient accumulation, the
    usual TPU setting) the weight cancels and class weighting silently does nothing. Here the
    weight scales the sample's loss regardless of batch size.

    NaN/inf in ``logits`` propagate into the result; the loop turns that into a DivergedError.
    """
    n_classes = logits.size(-1)
    log_probs = F.log_softmax(logits.float(), dim=-1)  # (B, C)
    off = smoothing / (n_classes - 1) if n_classes > 1 else 0.0
    # one_hot instead of scatter_ keeps the graph static for XLA and works for any batch size.
    one_hot = F.one_hot(targets, n_classes).to(log_probs.dtype)  # (B, C)
    true_dist = one_hot * (1.0 - smoothing - off) + off
    per_sample = -(true_dist * log_probs).sum(dim=-1)  # (B,)
    if weight is not None:
        per_sample = per_sample * weight.to(per_sample.dtype)[targets]
    return per_sample.mean()


def inverse_frequency_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """``total / (C * count_c)`` from the labels of the *whole* training split (float32, CPU).

    The seed estimated counts from the first 100 batches, which is biased by loader order and
    misses rare classes; counting the dataset's labels costs nothing because the dataset knows
    them without reading volumes. A class with no training sample has no defined weight and
    would never be learnt: that is a DataError, not a silent weight of 1.
    """
    counts = torch.bincount(torch.as_tensor(list(labels), dtype=torch.long), minlength=num_classes)
    if counts.numel() > num_classes:
        raise DataError(f"label {counts.numel() - 1} is outside 0..{num_classes - 1}")
    missing = [c for c in range(num_classes) if counts[c] == 0]
    if missing:
        raise DataError(
            f"class(es) {missing} have no training sample (counts {counts.tolist()}): "
            "class weights are undefined; add data or fix the split"
        )
    total = counts.sum().to(torch.float32)
    return total / (num_classes * counts.to(torch.float32))


def resolve_class_weights(
    setting: str | Sequence[float], labels: Sequence[int], num_classes: int
) -> torch.Tensor | None:
    """The ``train.class_weights`` setting (``auto`` | ``none`` | a list) as a tensor or None."""
    if setting == "none":
        return None
    if setting == "auto":
        return inverse_frequency_weights(labels, num_classes)
    weights = list(setting)
    if len(weights) != num_classes:
        raise ConfigError(
            [("train.class_weights", f"has {len(weights)} weights but the data has {num_classes} classes")]
        )
    return torch.tensor(weights, dtype=torch.float32)
