from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from octtrain import TrainConfig, fit
from octtrain.config.sections import LogSection
from octtrain.errors import HostError
from octtrain.tracking.tracker import Tracker, read_metrics, redact_secrets
from octtrain.tracking.wandb_run import read_offline_run


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


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_metrics_the_disk_refuses_are_one_host_error_that_closing_does_not_hide(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")  # every write fails: ENOSPC
    tracker = Tracker(tmp_path, LogSection(), {})
    with pytest.raises(HostError) as caught:
        try:
            tracker.log_train(0, {"train/loss": 1.5})
        finally:
            tracker.close()  # as fit does; its flush of the line left in the buffer fails again
    assert str(caught.value) == ("disk full (No space left on device) writing the metrics "
                                 f"{tmp_path / 'metrics.jsonl'}")
    chain, err = [], caught.value.__context__
    while err is not None:
        chain.append(err)
        err = err.__context__
    assert [type(e) for e in chain] == [OSError]  # the write's; no second error from the close


def test_disabled_tracker_writes_nothing(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path, LogSection(wandb=True), {}, enabled=False)  # a non-master rank
    tracker.log_train(0, {"train/loss": 1.0})
    tracker.close()
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "wandb").exists()


def finished_offline_run(path: Path, timeout: float = 30.0) -> dict[str, Any]:
    """The offline run file once W&B's service has written it out: ``run.finish()`` returns
    before the service process has flushed every record."""
    deadline = time.monotonic() + timeout
    while True:
        run = read_offline_run(path)
        if "name" in run and "state" in run["summary"] or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def test_wandb_offline_run_in_the_run_directory(small_config: Callable[..., TrainConfig], tmp_path: Path) -> None:
    cfg = small_config(**{"train.epochs": 2, "log.wandb": True, "log.wandb_mode": "offline",
                          "log.wandb_project": "octsearch-test"})
    fit(cfg, out_dir=tmp_path / "run", progress=False)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    (log,) = runs[0].glob("run-*.wandb")  # the offline log that `wandb sync` uploads
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 2
    run = finished_offline_run(log)
    assert run["name"] == "run" and run["group"] == ""  # the run directory's name, no group
    assert run["summary"]["state"] == "finished"


def test_wandb_run_has_name_group_params_per_class_metrics_and_confusion(
    small_config: Callable[..., TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    cfg = small_config(**{"train.epochs": 2, "log.wandb": True, "log.wandb_name": "s-trial-3",
                          "log.wandb_group": "s", "log.wandb_params": ["train.lr_head", "model.head.hidden"]})
    result = fit(cfg, out_dir=tmp_path / "run", progress=False)
    (log,) = (tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb")
    run = finished_offline_run(log)
    assert (run["name"], run["group"]) == ("s-trial-3", "s")
    assert run["config"]["params"] == {"train.lr_head": cfg.train.lr_head, "model.head.hidden": 0}
    assert run["config"]["classes"] == sorted(result.class_to_idx, key=result.class_to_idx.__getitem__)
    for name in run["config"]["classes"]:
        assert f"val/per_class_accuracy/{name}" in run["history"]
        assert f"val/per_class_f1/{name}" in run["history"]
        assert f"best/val/per_class_accuracy/{name}" in run["summary"]
    assert "train/loss" in run["history"] and "val/balanced_accuracy" in run["history"]
    assert run["summary"]["state"] == "finished" and run["tags"] == ["finished"]
    assert run["summary"]["best/confusion"]["_type"] == "table-file"
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    names = {i: n for n, i in result.class_to_idx.items()}  # an epoch names its majority class
    assert all(r["val/majority_class_name"] == names[r["val/majority_class"]] for r in records)
    best = max(r["val/balanced_accuracy"] for r in records)
    assert run["summary"]["best/val/balanced_accuracy"] == pytest.approx(best)
    assert run["summary"]["val/balanced_accuracy"]["max"] == pytest.approx(best)


def test_a_wandb_failure_is_one_warning_and_the_run_goes_on(
    small_config: Callable[..., TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: online W&B has no API key
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    cfg = small_config(**{"train.epochs": 1, "log.wandb": True, "log.wandb_mode": "online"})
    result = fit(cfg, out_dir=tmp_path / "run", progress=False)
    assert result.epochs_run == 1
    assert ("octtrain: warning: W&B: cannot start the run, going on without it: UsageError: "
            in capsys.readouterr().err)


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
    monkeypatch.setenv("OCTSEARCH_TRIAL_STORAGE", url)  # as search.trial.process passes it
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
