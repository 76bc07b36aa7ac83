"""A seconds-long slice of the chaos soak (bench/chaos.py): three workers (one through the proxy,
one with --parallel 2) on a private PostgreSQL, stop signals of every kind to workers and trial
processes and a short database outage, then every invariant checked. The 20-minute soak with
worker SIGKILLs (each costs the 2-minute heartbeat grace) runs by hand: BENCHMARKS.md."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from chaos import FAULTS, main

pytestmark = pytest.mark.private_postgres


def test_a_short_soak_keeps_every_invariant(tmp_path: Path) -> None:
    faults = [f for f in FAULTS if f != "worker-kill"]  # a kill waits out the heartbeat grace
    result_file = tmp_path / "chaos.json"
    code = main(["--minutes", "0.5", "--trials", "8", "--workers", "3", "--rate", "20", "--epochs", "4",
                 "--epoch-s", "0.5", "--faults", ",".join(faults), "--outage-s", "2-4", "--seed", "1",
                 "--finish-s", "240", "--root", str(tmp_path / "soak"), "--json", str(result_file)])
    result = json.loads(result_file.read_text())
    assert code == 0, result
    assert result["faults_total"] >= 3
    assert result["finished"] == 8 and all(result["invariants"].values())
