"""bench/replay_pruners.py on a slice of the checked-in tuning recording (seconds, not minutes)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import replay_pruners as rp

RECORDING = Path(__file__).resolve().parents[2] / "bench" / "data" / "curves-tuning.jsonl.gz"


@pytest.fixture(scope="module")
def tiny_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 8 configurations of the recording (the enqueued fix and baseline among them)."""
    with gzip.open(RECORDING, "rt") as f:
        lines = [json.loads(line) for _, line in zip(range(9), f, strict=False)]
    out = tmp_path_factory.mktemp("slice") / "slice.jsonl.gz"
    with gzip.open(out, "wt") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
    return out


def test_replay_of_a_slice_writes_every_pruner_and_column(tiny_slice: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "summary.json"
    assert rp.main(["--curves", str(tiny_slice), "--trials", "6", "--seeds", "2", "--json", str(out),
                    "--space", "spaces/scenario_a.yaml"]) == 0
    doc = json.loads(out.read_text())
    names = ("nop", "median", "percentile25", "hyperband", "successive_halving", "collapse",
             "collapse+median", "collapse+hyperband", "configured")
    for name in names:
        assert set(doc[name]) == {"epochs_fraction", "regret", "false_prunes", "collapsed_run_to_end",
                                  "median_stop_epoch"}
    assert doc["nop"]["epochs_fraction"] == 1.0 and doc["nop"]["regret"] == 0.0
    assert doc["nop"]["false_prunes"] == 0.0
    assert doc["configured"]["epochs_fraction"] <= 1.0
    printed = capsys.readouterr().out
    assert rp.COLLAPSED_DEFINITION in printed and "configured" in printed


def test_every_pruner_sees_the_same_trials_in_the_same_order(tiny_slice: Path) -> None:
    rec = rp.load_recording(tiny_slice)
    order = rp.draw_order(len(rec.configs), 5, seed=3)
    assert order == rp.draw_order(len(rec.configs), 5, seed=3) and len(set(order)) == 5
    nop = rp.replay(rec, rp.optuna.pruners.NopPruner, order)
    assert [o.config.index for o in nop] == [rec.configs[i].index for i in order]
    assert all(o.state != "pruned" and o.epochs_run == rec.budget for o in nop if o.config.state == "complete")


def test_the_seed_baseline_is_collapsed_and_the_fix_is_not(tiny_slice: Path) -> None:
    rec = rp.load_recording(tiny_slice)
    by_name = {c.name: c for c in rec.configs if c.name}
    assert rp.is_collapsed(by_name["seed_baseline"])
    assert not rp.is_collapsed(by_name["seed_fixed"])
