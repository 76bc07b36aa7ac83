from __future__ import annotations

import pytest

from octtrain.train.optim import lr_factor


@pytest.mark.parametrize(
    ("step", "kind", "expected"),
    [
        (0, "cosine", 0.25),  # warmup: (step + 1) / 4
        (1, "cosine", 0.5),
        (3, "cosine", 1.0),
        (4, "cosine", 1.0),  # first decay step: cos(0)
        (9, "cosine", 0.5 * (1 + __import__("math").cos(__import__("math").pi * 5 / 10))),
        (14, "cosine", 0.0),  # end of decay
        (20, "cosine", 0.0),  # past the end stays at the final value
        (0, "constant", 0.25),
        (10, "constant", 1.0),
    ],
)
def test_values(step: int, kind: str, expected: float) -> None:
    assert lr_factor(step, warmup_steps=4, total_steps=14, kind=kind) == pytest.approx(expected)


def test_no_warmup_starts_at_one() -> None:
    assert lr_factor(0, warmup_steps=0, total_steps=10) == 1.0


def test_monotone_decay_after_warmup() -> None:
    values = [lr_factor(s, 2, 20) for s in range(2, 21)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
