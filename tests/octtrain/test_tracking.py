from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from octtrain import TrainConfig, fit
from octtrain.sections import LogSection
from octtrain.tracking import Tracker, read_metrics, redact_secrets


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


PASSWORD = "s3cretPW-wandb"


def test_no_storage_password_reaches_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A trial process holds the storage URL in its environment; a config string could hold a
    URL too. Neither password appears anywhere W&B writes (offline mode, WANDB_DIR in tmp)."""
    url = f"postgresql+psycopg://octsearch:{PASSWORD}@db.example:5432/study"
    monkeypatch.setenv("OCTSEARCH_TRIAL_STORAGE", url)  # as search.trial_process passes it
    monkeypatch.setenv("OCTSEARCH_STORAGE", url)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    (tmp_path / "wandb_dir").mkdir()
    (tmp_path / "run").mkdir()
    run_config = {"data": {"manifest": "m.csv"}, "model": {"encoder": f"https://u:{PASSWORD}@hub/x"}}
    tracker = Tracker(tmp_path / "run", LogSection(wandb=True, wandb_mode="offline"), run_config)
    tracker.log_epoch(0, {"epoch": 0, "val/balanced_accuracy": 0.5})
    tracker.close()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in written)
    assert any(b"https://u:***@hub/x" in p.read_bytes() for p in written)  # the config went
    leaked = [str(p) for p in written if PASSWORD.encode() in p.read_bytes()]
    assert leaked == []


def test_redact_secrets() -> None:
    assert redact_secrets({"a": ["mysql+pymysql://root:pw@h/db", "plain", 3],
                           "b": "postgresql://u@h/db"}) == {
        "a": ["mysql+pymysql://root:***@h/db", "plain", 3], "b": "postgresql://u@h/db"}
