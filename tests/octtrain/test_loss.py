from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from octtrain.errors import ConfigError, DataError
from octtrain.train.loss import cross_entropy_with_smoothing, inverse_frequency_weights, resolve_class_weights


def _hand_loss(logits: list[float], target: int, smoothing: float, weight: float = 1.0) -> float:
    c = len(logits)
    m = max(logits)
    lse = m + math.log(sum(math.exp(v - m) for v in logits))
    log_p = [v - lse for v in logits]
    dist = [smoothing / (c - 1)] * c
    dist[target] = 1 - smoothing
    return -weight * sum(d * lp for d, lp in zip(dist, log_p, strict=True))


@pytest.mark.parametrize("smoothing", [0.0, 0.05, 0.15])
def test_matches_hand_computation(smoothing: float) -> None:
    logits = [[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, 0.3, 3.0]]
    targets = [0, 2]
    weight = [0.5, 2.0, 3.0, 1.0]
    expected = sum(_hand_loss(lg, t, smoothing, weight[t]) for lg, t in zip(logits, targets, strict=True)) / 2
    got = cross_entropy_with_smoothing(torch.tensor(logits), torch.tensor(targets),
                                       torch.tensor(weight), smoothing)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_no_weight_no_smoothing_equals_torch_ce() -> None:
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 3, 0])
    assert cross_entropy_with_smoothing(logits, targets).item() == pytest.approx(
        F.cross_entropy(logits, targets).item(), rel=1e-6)


def test_weight_matters_at_batch_size_one() -> None:
    """torch's weighted mean divides by the batch's weight sum, cancelling w at batch size 1."""
    logits = torch.tensor([[0.3, 0.1, -0.2, 0.0]])
    target = torch.tensor([2])
    weight = torch.tensor([0.25, 1.0, 4.0, 1.0])
    torch_weighted = F.cross_entropy(logits, target, weight=weight)
    unweighted = F.cross_entropy(logits, target)
    assert torch_weighted.item() == pytest.approx(unweighted.item())  # the trap
    ours = cross_entropy_with_smoothing(logits, target, weight)
    assert ours.item() == pytest.approx(4.0 * unweighted.item(), rel=1e-6)


def test_accumulated_batch_one_equals_full_batch_mean() -> None:
    logits = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 0, 0, 0, 0, 1, 2, 3])
    weight = inverse_frequency_weights(targets.tolist(), 4)
    full = cross_entropy_with_smoothing(logits, targets, weight, 0.05)
    accumulated = sum(cross_entropy_with_smoothing(logits[i:i + 1], targets[i:i + 1], weight, 0.05) / 8
                      for i in range(8))
    assert float(accumulated) == pytest.approx(full.item(), rel=1e-6)


def test_gradient_flows_and_nan_propagates() -> None:
    logits = torch.zeros(2, 4, requires_grad=True)
    cross_entropy_with_smoothing(logits, torch.tensor([1, 3]), smoothing=0.1).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    bad = torch.tensor([[float("nan"), 0.0, 0.0, 0.0]])
    assert math.isnan(cross_entropy_with_smoothing(bad, torch.tensor([0])).item())


def test_inverse_frequency_weights() -> None:
    labels = [0] * 7 + [1] + [2] + [3]
    w = inverse_frequency_weights(labels, 4)
    assert w.tolist() == pytest.approx([10 / (4 * 7), 10 / 4, 10 / 4, 10 / 4])


def test_missing_class_is_an_error() -> None:
    with pytest.raises(DataError, match=r"class\(es\) \[2\] have no training sample"):
        inverse_frequency_weights([0, 0, 1, 3], 4)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [("none", None), ("auto", [5 / 6, 5 / 6, 5 / 3]), ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])],
)
def test_resolve_class_weights(setting: object, expected: list[float] | None) -> None:
    out = resolve_class_weights(setting, [0, 0, 1, 1, 2], 3)  # type: ignore[arg-type]
    if expected is None:
        assert out is None
    else:
        assert out is not None and out.tolist() == pytest.approx(expected)


def test_weight_list_of_wrong_length() -> None:
    with pytest.raises(ConfigError, match="train.class_weights: has 2 weights but the data has 3 classes"):
        resolve_class_weights([1.0, 2.0], [0, 1, 2], 3)
