"""octtrain.train.startup: a run's cost before its first optimizer step, reported with epoch 0."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from octtrain import TrainConfig, fit
from octtrain.train.progress import epoch_line
from octtrain.train.startup import StartupClock, process_age_s

PHASES = ["startup/data_s", "startup/model_s", "startup/first_step_s", "startup/imports_s"]


def test_the_first_epoch_reports_each_phase_of_the_start_and_their_sum(
        small_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    result = fit(small_config(**{"train.epochs": 2}), out_dir=tmp_path / "run", progress=False)
    first, second = result.history
    assert all(first[k] >= 0 for k in PHASES)
    assert first["startup/total_s"] == pytest.approx(sum(first[k] for k in PHASES))
    assert first["startup/imports_s"] > 0.5  # this pytest process imported torch long ago
    assert not any(k.startswith("startup/") for k in second)
    assert 0 <= first["io/stall_share"] <= 1
    line = epoch_line(first, 2, "val/balanced_accuracy", False)
    assert "stall " in line and "\nstartup " in line and "first_step " in line


def test_the_clock_marks_the_first_optimizer_step_only() -> None:
    clock = StartupClock(imports_s=None)
    layer = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    clock.watch_first_step(optimizer)
    time.sleep(0.02)
    seen = []
    for _ in range(2):
        layer(torch.ones(1, 2)).sum().backward()
        optimizer.step()
        seen.append(clock.phases["first_step"])
        time.sleep(0.01)
    first = seen[0]
    assert first >= 0.02 and seen == [first, first]  # the second step marks nothing
    assert clock.metrics(compile_s=1.5) == {"startup/first_step_s": first, "startup/compile_s": 1.5,
                                            "startup/total_s": first + 1.5}


def test_process_age_counts_from_the_start_of_this_process() -> None:
    age = process_age_s()
    assert age is not None and 0 < age < 3600
