"""Shared fixtures of the octtrain tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from octtrain.config import TrainConfig, config_from_dict
from octtrain.synthetic import make_synthetic

# --- runtime, distributed and XLA tests ---------------------------------------------------------

# 40 balanced volumes of 16 × 32 × 32, one per patient: with val_fraction 0.2, 32 train and 8
# val volumes (2 per class), so the batch arithmetic of the data-parallel tests is exact.
SMALL = {"n_volumes": 40, "frames": 16, "height": 32, "width": 32, "volumes_per_patient": 1,
         "class_shares": (0.25, 0.25, 0.25, 0.25), "seed": 11}


@pytest.fixture(scope="session")
def small_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest of a small balanced phantom set; shared read-only by the whole session."""
    return make_synthetic(tmp_path_factory.mktemp("small") / "data", **SMALL)  # type: ignore[arg-type]


@pytest.fixture
def small_config(small_manifest: Path, tmp_path: Path) -> Callable[..., TrainConfig]:
    """``small_config(**{"train.epochs": 3, ...})``: a tiny-model config on ``small_manifest``
    (frozen encoder, linear head, no augmentation, no dropout) with its cache in ``tmp_path``."""

    def make(**overrides: Any) -> TrainConfig:
        base = config_from_dict({
            "data": {"manifest": str(small_manifest), "frames": 16, "height": 32, "width": 32,
                     "cache_dir": str(tmp_path / "volume-cache"), "val_fraction": 0.2,
                     "test_fraction": 0.0},
            "model": {"encoder": "tiny"},
            "train": {"epochs": 3, "batch_size": 4, "warmup_epochs": 1,
                      "early_stopping": {"enabled": False}},
            "runtime": {"device": "cpu"},
        })
        return base.with_overrides(overrides)

    return make
