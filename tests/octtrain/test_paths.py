"""octtrain/config/paths.py: relative paths are relative to the file they are written in."""

from __future__ import annotations

from pathlib import Path

import pytest

from octtrain.config.paths import resolve_paths
from octtrain.config.train_config import load_config


def test_a_config_file_s_paths_are_relative_to_its_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "enc").mkdir()
    path = folder / "train.yaml"
    path.write_text("data: {manifest: ../data/m.csv, cache_dir: cache}\n"
                    "runtime: {xla_cache_dir: /abs/xla}\nmodel: {encoder: enc}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path)
    assert cfg.data.manifest == str(tmp_path / "data" / "m.csv")
    assert cfg.data.cache_dir == str(folder / "cache")
    assert cfg.runtime.xla_cache_dir == "/abs/xla"
    assert cfg.model.encoder == str(folder / "enc")  # a local folder that exists there
    # --set values on the command line are relative to the working directory
    cfg = load_config(path, ["data.manifest=here.csv", "model.encoder=org/hub-id"])
    assert cfg.data.manifest == str(elsewhere / "here.csv")
    assert cfg.model.encoder == "org/hub-id"  # not a path: a hub id


def test_presets_hub_ids_and_non_strings_are_left_alone(tmp_path: Path) -> None:
    raw = {"model": {"encoder": "tiny"}, "data": {"root": "vols", "cache_dir": None},
           "train": {"epochs": 3}}
    out = resolve_paths(raw, tmp_path)
    assert out == {"model": {"encoder": "tiny"}, "data": {"root": str(tmp_path / "vols"),
                                                          "cache_dir": None},
                   "train": {"epochs": 3}}
    assert raw["data"]["root"] == "vols"  # a copy
    assert resolve_paths(["not", "a", "mapping"], tmp_path) == ["not", "a", "mapping"]
