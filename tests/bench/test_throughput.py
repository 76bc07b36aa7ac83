"""bench/throughput.py on a few tiny phantoms: one cold and one warm trial, every column."""

from __future__ import annotations

import re

import pytest
import throughput


def test_a_cold_and_a_warm_trial_print_one_row_each(capsys: pytest.CaptureFixture[str]) -> None:
    throughput.main(["--volumes", "12", "--frames", "4", "--size", "32", "--batch", "2",
                     "--epochs", "1", "--states", "frozen", "--precisions", "bf16", "--no-augment"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("tiny encoder, 12 phantoms of 4x32x32, batch 2, 1 epochs")
    rows = [line.split() for line in lines[3:]]
    assert [r[:3] for r in rows] == [["frozen", "bf16", "cold"], ["frozen", "bf16", "warm"]]
    for r in rows:
        assert len(r) == 14 and float(r[3]) > 0 and re.fullmatch(r"\d+\.\d%", r[4])
        assert float(r[9]) > 0  # startup seconds
