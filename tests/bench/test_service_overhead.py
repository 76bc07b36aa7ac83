"""bench/service_overhead.py, a seconds-long slice: 2 workers x 3 epochs, directly and through
the proxy, on a fresh SQLite file, so the script cannot rot."""

from __future__ import annotations

from pathlib import Path

import pytest
import service_overhead


def test_prints_the_direct_and_proxy_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    assert service_overhead.main(["--storage", url, "--workers", "2", "--epochs", "3", "--trials", "1",
                                  "--gap-s", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "2 workers x 1 trials x <= 3 epochs" in lines[0] and "median epoch_s of curves-tuning" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"direct", "proxy"}
    for cells in rows.values():
        workers, epochs, median_ms, p95_ms = int(cells[1]), int(cells[2]), float(cells[3]), float(cells[4])
        assert workers == 2 and 2 <= epochs <= 6  # a trial the pruner stops reports fewer epochs
        assert 0 < median_ms <= p95_ms
