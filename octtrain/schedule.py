"""Learning-rate schedule: linear warmup, then cosine decay (or constant), per optimizer step."""

from __future__ import annotations

import math


def lr_factor(step: int, warmup_steps: int, total_steps: int, kind: str = "cosine") -> float:
    """Multiplier of the base LR at optimizer ``step`` (0-based).

    Warmup ramps linearly from ``1/warmup_steps`` to 1 over ``warmup_steps`` steps (never 0, so
    the first step already moves the weights). After warmup, ``cosine`` decays to 0 at
    ``total_steps``; ``constant`` stays at 1. Steps past ``total_steps`` keep the final value.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    if kind != "cosine":
        raise ValueError(f"unknown scheduler kind {kind!r}")
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))
