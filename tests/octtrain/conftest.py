"""Shared fixtures: a tiny phantom data set, a read counter, small trainer configs, a list of
the rank processes still alive, and a real full file system."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from octtrain.config.train_config import TrainConfig, config_from_dict
from octtrain.data import readers
from octtrain.synthetic.writer import make_synthetic

# 32 volumes of 4 × 32 × 32, one volume per patient: 23 / 3 / 3 / 3 volumes per class with
# the default 70/10/10/10 shares, so every class has >= 3 patients and reaches val.
TINY = {"n_volumes": 32, "frames": 4, "height": 32, "width": 32, "volumes_per_patient": 1,
        "seed": 3}


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest of a small phantom set; shared read-only by the whole session."""
    return make_synthetic(tmp_path_factory.mktemp("tiny") / "data", **TINY)  # type: ignore[arg-type]


class ReadCounter:
    def __init__(self) -> None:
        self.paths: list[str] = []

    @property
    def calls(self) -> int:
        return len(self.paths)


@pytest.fixture
def count_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[ReadCounter]:
    """Count calls of ``octtrain.data.readers.read_volume`` (the cache calls it via the module)."""
    counter = ReadCounter()
    real = readers.read_volume

    def counting(path: object, **options: Any) -> np.ndarray:
        counter.paths.append(str(path))
        return real(path, **options)  # type: ignore[arg-type]

    monkeypatch.setattr(readers, "read_volume", counting)
    yield counter


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


@pytest.fixture
def live_ranks() -> Callable[[], list[int]]:
    """A function listing the rank processes of this test process that still run."""
    return _live_ranks


def _live_ranks() -> list[int]:
    """PIDs of running processes spawned by this one through multiprocessing (ranks), not
    counting multiprocessing's own resource tracker, which lives as long as this process."""
    multiprocessing.active_children()  # reaps finished multiprocessing children
    me, alive = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]  # after "pid (comm)"
        if int(ppid) == me and state != "Z" and b"spawn_main" in cmdline:
            alive.append(int(entry.name))
    return alive
