from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

from octtrain import TrainConfig, fit
from octtrain.sections import LogSection
from octtrain.tracking import Tracker, read_metrics


def test_jsonl_is_strict_json_with_train_before_epoch(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, LogSection(), {})
    tracker.log_train(0, {"train/loss": 1.5})
    tracker.log_epoch(0, {"epoch": 0, "train/loss": 1.5, "val/balanced_accuracy": math.nan,
                          "val/per_class_accuracy": [0.5, math.inf]})
    tracker.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [rec["phase"] for rec in lines] == ["train", "epoch"]
    assert lines[1]["val/balanced_accuracy"] is None  # NaN is not JSON
    assert lines[1]["val/per_class_accuracy"] == [0.5, None]
    assert read_metrics(tmp_path / "metrics.jsonl", phase="train") == [
        {"phase": "train", "epoch": 0, "train/loss": 1.5}]


def test_disabled_tracker_writes_nothing(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, LogSection(wandb=True), {}, enabled=False)  # a non-master rank
    tracker.log_train(0, {"train/loss": 1.0})
    tracker.close()
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "wandb").exists()


def test_wandb_offline_run_in_the_run_directory(small_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    cfg = small_config(**{"train.epochs": 2, "log.wandb": True, "log.wandb_mode": "offline",
                          "log.wandb_project": "octsearch-test"})
    fit(cfg, out_dir=tmp_path / "run", progress=False)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))  # the offline log that `wandb sync` uploads
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 2


def test_rerun_into_the_same_directory_replaces_the_history(tmp_path: Path) -> None:
    for _ in range(2):
        tracker = Tracker(tmp_path, LogSection(), {})
        tracker.log_epoch(0, {"epoch": 0})
        tracker.close()
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 1
