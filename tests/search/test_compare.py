"""``octsearch compare A B``: two finished trials of a real (fake-trainer) study side by side."""

from __future__ import annotations

import pytest

from search.cli import main


def test_compare_shows_differing_parameters_curves_and_both_matrices(
    reviewed_study: tuple[str, str], capsys: pytest.CaptureFixture[str],
) -> None:
    url, name = reviewed_study
    assert main(["compare", "0", "2", "--storage", url, "--study", name]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "study 'reviewed': trial 0 (collapses) vs trial 2 (learns)"
    assert lines[1].startswith("  trial 0 (collapses): PRUNED, value 0.25; stuck: ")
    assert lines[2].startswith("  trial 2 (learns): COMPLETE, value 0.9, 95% interval [")
    assert "parameters that differ (1 of 2; the rest are equal):" in out
    assert any(line.split() == ["model.head.hidden", "0", "64"] for line in lines)
    # epochs 0-2 of both, 3-5 of the learner only; the learner's best (0.9) marked at epoch 4
    rows = {line.split()[0]: line for line in lines if " / " in line}
    assert "0.250 / 0.969" in rows["0"] and "0.900 / 0.375 *" in rows["4"]
    assert "trial 0 (collapses) at its prune epoch 2: per-class accuracy 0 1.000, 1 0.000" in out
    assert "trial 2 (learns) at its best epoch 4: per-class accuracy 0 0.900, " in out
    assert out.count("confusion (rows: true class, columns: predicted):") == 2
    assert main(["compare", "0", "9", "--storage", url, "--study", name]) == 2
    assert "study 'reviewed' has no trial 9 (trials 0-2)" in capsys.readouterr().err
