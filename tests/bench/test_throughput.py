"""bench/throughput.py on a few tiny phantoms: one trial process (a cold cache), every column."""

from __future__ import annotations

import re

import pytest
import throughput


def test_a_trial_prints_one_row_with_every_column(capsys: pytest.CaptureFixture[str]) -> None:
    throughput.main(["--volumes", "12", "--frames", "4", "--size", "32", "--batch", "2",
                     "--epochs", "1", "--states", "frozen", "--precisions", "bf16", "--caches", "cold",
                     "--no-augment"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tiny encoder, 12 phantoms of 4x32x32, batch 2, 1 epochs")
    rows = [line.split() for line in lines[3:]]
    assert [r[:3] for r in rows] == [["frozen", "bf16", "cold"]]
    for r in rows:
        assert len(r) == 14 and float(r[3]) > 0 and re.fullmatch(r"\d+\.\d%", r[4])
        assert float(r[9]) > 0  # startup seconds
