"""The optimizer and its learning-rate schedule: AdamW over two parameter groups (head and
encoder, each at its own LR), linear warmup then cosine decay (or constant), per optimizer step.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from octtrain.config import TrainSection
from octtrain.model import OctClassifier


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


def param_groups(model: OctClassifier, lr_head: float, lr_encoder: float,
                 weight_decay: float) -> list[dict[str, Any]]:
    """Head and encoder at their own LR; biases and norms get no weight decay."""
    groups = []
    for name, params, lr in (("head", list(model.head_parameters()), lr_head),
                             ("encoder", list(model.encoder_parameters()), lr_encoder)):
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": name})
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": name})
    return [g for g in groups if g["params"]]


def build_optimizer(model: OctClassifier, cfg: TrainSection) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, cfg.lr_head, cfg.lr_encoder, cfg.weight_decay))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainSection,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """:func:`lr_factor` over the whole run; ``scheduler.step()`` once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(lr_factor, warmup_steps=cfg.warmup_epochs * steps_per_epoch,
                                     total_steps=cfg.epochs * steps_per_epoch, kind=cfg.scheduler))


def current_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``{"lr/head": ..., "lr/encoder": ...}``: the LRs the scheduler set last."""
    return {
        "lr/head": optimizer.param_groups[0]["lr"],
        "lr/encoder": next(g["lr"] for g in optimizer.param_groups if g["name"] == "encoder"),
    }
