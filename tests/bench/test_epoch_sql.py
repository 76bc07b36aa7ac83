"""bench/epoch_sql.py on a fresh SQLite file (seconds): it runs, and an epoch reads the study's
trials back at most once (the inner median pruner), not once more for the reporter."""

from __future__ import annotations

from pathlib import Path

import epoch_sql
import pytest


def test_an_epoch_reads_the_trials_at_most_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert epoch_sql.main(["--storage", f"sqlite:///{tmp_path / 'bench.db'}", "--others", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("SQL per epoch: sqlite:///") and "2 other running trials" in lines[0]
    per_epoch = {" ".join(line.split()[1:]): float(line.split()[0]) for line in lines[2:]}
    assert per_epoch["all"] > 0
    assert per_epoch["INSERT INTO"] == pytest.approx(2.0, abs=0.2)  # the epoch's metrics, its value
    reads = [n for what, n in per_epoch.items() if what.startswith("SELECT trial_user_attributes.trial_id")]
    assert len(reads) == 1 and reads[0] <= 1.0  # the pruner's read of the study; none by the reporter
