"""bench/record_curves.py on a tiny phantom set: the record format, and resuming a killed run."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
import record_curves
import yaml

from octtrain.synthetic.writer import make_synthetic

TINY = {"n_volumes": 32, "frames": 4, "height": 32, "width": 32, "volumes_per_patient": 1, "seed": 3}


@pytest.fixture(scope="module")
def tiny_space(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("record")
    manifest = make_synthetic(root / "data", **TINY)  # type: ignore[arg-type]
    space = {
        "base": {
            "data": {"manifest": str(manifest), "frames": 4, "height": 32, "width": 32,
                     "cache_dir": str(root / "cache"), "val_fraction": 0.3, "test_fraction": 0.0},
            "model": {"encoder": "tiny", "freeze_encoder": True, "unfreeze_at_epoch": 1},
            "train": {"epochs": 5, "batch_size": 4, "warmup_epochs": 0},
            "runtime": {"device": "cpu"},
        },
        "params": {"model.head.hidden": {"type": "categorical", "choices": [0, 16]},
                   "train.lr_head": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "enqueue": [{"name": "linear", "params": {"model.head.hidden": 0, "train.lr_head": 1e-3}}],
    }
    path = root / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path, manifest


def _read(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def _args(space: Path, manifest: Path, out: Path) -> list[str]:
    return ["--space", str(space), "--manifest", str(manifest), "--configs", "2", "--seed", "7",
            "--epochs", "2", "--out", str(out)]


def test_records_every_epoch_of_every_configuration(tiny_space: tuple[Path, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    space, manifest = tiny_space
    out = tmp_path / "curves.jsonl.gz"
    assert record_curves.main(_args(space, manifest, out)) == 0
    header, *rows = _read(out)
    assert header["header"]["epochs"] == 2 and header["header"]["seed"] == 7
    assert header["header"]["metric"] == "val/balanced_accuracy"
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert rows[0]["name"] == "linear" and rows[0]["params"] == {"model.head.hidden": 0, "train.lr_head": 1e-3}
    for row in rows:
        assert row["state"] == "complete" and row["unfreeze_at_epoch"] == 1
        assert [e["epoch"] for e in row["epochs"]] == [0, 1]  # the full budget, no early stop
        first = row["epochs"][0]
        for key in ("val/balanced_accuracy", "val/pred_hist", "val/majority_class", "val/max_class_share",
                    "val/pred_entropy", "val/loss", "train/loss", "train/balanced_accuracy", "epoch_s"):
            assert key in first
        assert sum(first["val/pred_hist"]) == first["val/count"] > 0
    assert not out.with_name(out.name + ".partial").exists()
    assert "[3/3]" in capsys.readouterr().out


def test_an_interrupted_recording_resumes_where_it_stopped(tiny_space: tuple[Path, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    space, manifest = tiny_space
    full = tmp_path / "full.jsonl.gz"
    record_curves.main(_args(space, manifest, full))
    header, *rows = _read(full)
    capsys.readouterr()
    # What a run killed while training config 2 leaves: the header, two finished configurations
    # (one marked so that we can tell it was kept, not retrained) and half a line.
    out = tmp_path / "resumed.jsonl.gz"
    rows[1]["fit_s"] = -1.0
    partial = out.with_name(out.name + ".partial")
    header["header"]["command"] = "another command line"
    partial.write_text("\n".join(json.dumps(x) for x in (header, rows[0], rows[1])) + '\n{"index": 2, "na')
    assert record_curves.main(_args(space, manifest, out)) == 0
    printed = capsys.readouterr().out
    assert "resuming: 2 done" in printed and "[3/3] config 2" in printed and "config 0" not in printed
    _, *resumed = _read(out)
    assert [r["index"] for r in resumed] == [0, 1, 2]
    assert resumed[1]["fit_s"] == -1.0  # kept from the partial file
    assert resumed[2]["params"] == rows[2]["params"]  # the sampler replays: same configuration 2


def test_a_partial_file_of_other_arguments_is_refused(tiny_space: tuple[Path, Path], tmp_path: Path) -> None:
    space, manifest = tiny_space
    out = tmp_path / "curves.jsonl.gz"
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps({"header": {"format": record_curves.FORMAT, "seed": 99}}) + "\n")
    with pytest.raises(SystemExit, match="other .*seed"):
        record_curves.main(_args(space, manifest, out))
    assert partial.exists()  # nothing lost


def test_shards_record_their_share_and_the_last_one_writes_the_recording(
        tiny_space: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space, manifest = tiny_space
    out = tmp_path / "sharded.jsonl.gz"
    assert record_curves.main([*_args(space, manifest, out), "--shard", "1/2"]) == 0
    assert "shard 1/2 done; 2 configurations are left to other shards" in capsys.readouterr().out
    assert not out.exists() and out.with_name(out.name + ".partial.1").exists()
    assert record_curves.main([*_args(space, manifest, out), "--shard", "0/2"]) == 0
    _, *rows = _read(out)
    assert [r["index"] for r in rows] == [0, 1, 2]
    assert not list(tmp_path.glob("sharded.jsonl.gz.partial*"))
    # Each shard replays the sampler: configuration i has the parameters an unsharded run gives it.
    args = record_curves.parse_args(_args(space, manifest, out))
    loaded = record_curves.load_space(str(space))
    expected = [loaded.suggest(trial) for _, trial, _ in record_curves.configurations(loaded, args)]
    assert [r["params"] for r in rows] == expected


def test_a_bad_shard_is_refused(tiny_space: tuple[Path, Path], tmp_path: Path) -> None:
    space, manifest = tiny_space
    for bad in ("2/2", "1", "a/b"):
        with pytest.raises(SystemExit):
            record_curves.parse_args([*_args(space, manifest, tmp_path / "x.jsonl.gz"), "--shard", bad])
