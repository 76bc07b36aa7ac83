from __future__ import annotations

import math

import pytest

from octtrain.config.sections import EarlyStoppingSection
from octtrain.train.early_stop import EarlyStopping, is_improvement


@pytest.mark.parametrize(
    ("value", "best", "mode", "delta", "expected"),
    [
        (0.5, None, "max", 0.0, True),
        (0.5, 0.4, "max", 0.0, True),
        (0.4005, 0.4, "max", 0.001, False),
        (0.3, 0.4, "min", 0.0, True),
        (math.nan, None, "max", 0.0, False),
        (math.nan, 0.4, "max", 0.0, False),
    ],
)
def test_is_improvement(value: float, best: float | None, mode: str, delta: float, expected: bool) -> None:
    assert is_improvement(value, best, mode, delta) is expected


def test_patience() -> None:
    stop = EarlyStopping(EarlyStoppingSection(patience=2))
    assert stop.update(0, 0.3) and not stop.should_stop
    assert not stop.update(1, 0.3) and not stop.should_stop
    assert not stop.update(2, 0.2) and stop.should_stop
    assert (stop.best, stop.best_epoch) == (0.3, 0)


def test_disabled_never_stops() -> None:
    stop = EarlyStopping(EarlyStoppingSection(enabled=False, patience=1))
    for e in range(5):
        stop.update(e, 0.1)
    assert not stop.should_stop
