"""The Scenario-A demo on a HEYEX .vol copy of the phantoms (``make-synthetic --format vol``)
gives the .npy run's split and metrics: the real CLI, the shipped fixed-recipe config, the
smallest set on which every class reaches validation (32 volumes of 4 x 32 x 32; 2 epochs, the
encoder frozen in the first and trained in the second)."""

from __future__ import annotations

from pathlib import Path

import pytest

from octtrain.cli import main
from octtrain.config import load_config, parse_overrides
from octtrain.data import split_records
from octtrain.data.formats import header_info
from octtrain.tracking.tracker import read_metrics

pytest.importorskip("eyepy", reason="the formats extra (eyepy) is not installed")

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = ["--n-volumes", "32", "--frames", "4", "--height", "32", "--width", "32",
             "--volumes-per-patient", "1", "--seed", "3"]
# Everything that describes the model's predictions and losses; times and I/O counters differ.
COMPARED = ("train/loss", "train/balanced_accuracy", "val/loss", "val/accuracy",
            "val/balanced_accuracy", "val/macro_f1", "val/confusion", "val/pred_hist")


def _demo(tmp_path: Path, fmt: str) -> tuple[list[dict[str, object]], dict[str, list[str]]]:
    data = tmp_path / fmt
    assert main(["make-synthetic", "--out", str(data), "--format", fmt, *SYNTHETIC]) == 0
    overrides = [f"data.manifest={data / 'manifest.csv'}", "data.frames=4", "data.height=32",
                 "data.width=32", f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=2",
                 "train.warmup_epochs=1", "model.unfreeze_at_epoch=1",
                 "runtime.device=cpu"]
    config = str(REPO / "configs" / "scenario_a_fixed.yaml")
    argv = ["train", "--config", config, "--out", str(tmp_path / f"run-{fmt}"), "--quiet"]
    assert main([*argv, *(a for o in overrides for a in ("--set", o))]) == 0
    records, _ = split_records(load_config(config, parse_overrides(overrides)).data)
    split = {name: sorted(r.patient_id for r in rs) for name, rs in records.items()}
    return read_metrics(tmp_path / f"run-{fmt}" / "metrics.jsonl"), split


def test_scenario_a_demo_on_vol_matches_npy(tmp_path: Path) -> None:
    npy_epochs, npy_split = _demo(tmp_path, "npy")
    vol_epochs, vol_split = _demo(tmp_path, "vol")
    assert vol_split == npy_split and len(npy_split["val"]) >= 4
    assert len(vol_epochs) == len(npy_epochs) == 2
    for vol, npy in zip(vol_epochs, npy_epochs, strict=True):
        # The .vol round trip is exact on uint8 phantoms, so the float16 stores hold the same
        # values and the runs are the same run.
        assert {k: vol[k] for k in COMPARED} == {k: npy[k] for k in COMPARED}
    volume = next((tmp_path / "vol" / "1_drusen").glob("*.vol"))
    assert header_info(volume).patient_id == volume.name.split("_")[0]  # the header carries it
