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


def test_replay_of_a_slice_writes_every_pruner_and_statistic(tiny_slice: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "summary.json"
    assert rp.main(["--curves", str(tiny_slice), "--trials", "6", "--orders", "3", "--jobs", "1",
                    "--json", str(out), "--space", "spaces/scenario_a.yaml"]) == 0
    doc = json.loads(out.read_text())
    rows = doc["recordings"][str(tiny_slice)]
    names = ("nop", "median", "percentile25", "hyperband", "successive_halving", "patient(median)", "reach",
             "collapse", "collapse+median", "collapse+hyperband", "collapse+patient(median)", "collapse+reach",
             "configured", rp.HINDSIGHT)
    assert list(rows) == list(names)
    tol = 1 / (4 * 10)  # the tuning recording's validation set: 76/10/10/10 volumes
    for name in names:
        assert set(rows[name]) == set(rp.JSON_KEYS) and rows[name]["tol"] == pytest.approx(tol)
        assert 0.0 <= rows[name]["p_regret"] <= 1.0 and 0.0 <= rows[name]["best_lost"] <= 1.0
    assert rows["nop"]["epochs_fraction"] == 1.0 and rows["nop"]["regret"] == 0.0
    assert rows["nop"]["best_lost"] == 0.0 and rows[rp.HINDSIGHT]["best_lost"] == 0.0
    assert rows[rp.HINDSIGHT]["epochs_fraction"] < 1.0 and rows[rp.HINDSIGHT]["regret"] == 0.0
    assert doc["subsets"][str(tiny_slice)]["trials"] == 6
    printed = capsys.readouterr().out
    assert rp.COLLAPSED_DEFINITION in printed and "tol 0.0250" in printed
    assert "3 orders of all configurations" in printed


def test_best_lost_counts_orders_where_every_near_best_configuration_was_pruned(tiny_slice: Path) -> None:
    rec = rp.load_recording(tiny_slice)
    order = list(range(len(rec.configs)))
    nop = rp.replay(rec, rp.optuna.pruners.NopPruner, order)
    best = max(rp.full_curve_best(c, rec) for c in rec.configs)
    near = {o.config.index for o in nop if rp.full_curve_best(o.config, rec) >= best - 0.025}
    assert not rp.score(nop, rec, 0.025).best_lost
    lost = [rp.dataclasses.replace(o, state="pruned") if o.config.index in near else o for o in nop]
    assert rp.score(lost, rec, 0.025).best_lost


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
