"""bench/parallel.py in seconds: the fake trainer instead of the real one, its table checked."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import parallel
import pytest

SEARCH_TESTS = Path(__file__).resolve().parents[1] / "search"
sys.path.insert(0, str(SEARCH_TESTS))
from search_testing import write_cli_space  # noqa: E402


def test_runs_each_parallelism_and_prints_trials_per_hour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("--parallel 2 needs two cores")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(SEARCH_TESTS),
                                                      os.environ.get("PYTHONPATH", "")]))
    space = write_cli_space(tmp_path / "fake.yaml")
    assert parallel.main(["--space", str(space), "--trials", "2", "--parallel", "1", "2",
                          "--workdir", str(tmp_path / "work"), "--fit-target", "fake_fit:fit"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| --parallel | trials | epochs |")
    one, two = (row.strip("| ").split(" | ") for row in rows[1:])
    assert one[:3] == ["1", "2", "12"] and two[:3] == ["2", "2", "12"]  # 6 epochs each, unpruned
    assert one[-1] == "1.00x" and float(two[6]) > 0  # trials per hour
