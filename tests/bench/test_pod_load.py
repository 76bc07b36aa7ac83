"""bench/pod_load.py at a tiny size (2 workers x 2 slots, 4 trials of 2 short epochs, through the
proxy and directly on the PostgreSQL test server): its checks pass, its rows add up, the
database connections are the proxy's or else the workers' and trial processes', and it leaves
neither a process nor a study behind. And what its sizing rests on: a worker and a trial process of the
stand-in trainer import no torch (about 260 MiB each)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pod_load
import pytest

SEARCH_TESTS = Path(__file__).resolve().parents[1] / "search"
sys.path.insert(0, str(SEARCH_TESTS))
from search_testing import reachable_server  # noqa: E402

from search.storage.sql import open_storage  # noqa: E402


@pytest.mark.postgres
def test_a_tiny_pod_through_the_proxy_and_directly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = reachable_server("postgres")
    workdir = tmp_path / "work"
    assert pod_load.main(["--hosts", "2", "--chips", "2", "--trials", "4", "--epochs", "2", "--epoch-s", "0.5",
                          "--storage", url, "--start-gap-s", "0", "--sample-s", "0.2",
                          "--workdir", str(workdir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pod_load: 2 workers x 2 slots = 4 trials at once, 4 trials of <= 2 epochs")
    assert lines[-2:] == ["proxy: checks passed", "direct: checks passed"]
    peaks = {}
    for mode in ("proxy", "direct"):
        (row,) = (line for line in lines if line.startswith(f"| {mode} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[:4] == [mode, "shared", "2 × 2", "4"]
        peak_trials, epochs, median_ms, p95_ms = int(cells[4]), int(cells[5]), float(cells[6]), float(cells[7])
        assert 1 <= peak_trials <= 4  # never more trials at once than slots
        assert epochs == 8  # 4 trials x 2 epochs, none pruned (the collapse rule waits for epoch 2)
        assert 0 < median_ms <= p95_ms
        peaks[mode] = int(cells[8])
        (note,) = (line for line in lines if line.startswith(f"{mode}: {cells[8]} connections at the peak ("))
        roles = dict(part.split() for part in note.split("(", 1)[1].split(")", 1)[0].split(", "))
        assert sum(map(int, roles.values())) == peaks[mode]
        if mode == "proxy":
            assert list(roles) == ["proxy"]  # the workers and trials talk gRPC, not SQL
        else:  # each process its own pool (2 kept, 4 of overflow)
            assert "proxy" not in roles and 1 <= int(roles.get("trial", 0)) <= 4 * 6
    assert 1 <= peaks["proxy"] <= 20  # one pool: 16 connections and 4 of overflow
    storage = open_storage(url, heartbeat=False)
    studies = [line.split()[-1] for line in lines if line.startswith("pod_load: ") and ": study " in line]
    assert len(studies) == 2 and not set(studies) & set(optuna.study.get_all_study_names(storage))  # dropped
    assert not pod_load.trial_pids([workdir])
    assert not [p for p in Path("/proc").glob("[0-9]*/cmdline") if str(workdir).encode() in _read(p)]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_workers_and_trial_processes_of_the_stand_in_trainer_import_no_torch() -> None:
    code = ("import sys, search.cli, search.trial.__main__, search.trial.process, fake_fit; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_xla', 'transformers')))")
    env_path = f"{pod_load.REPO}:{SEARCH_TESTS}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"}, check=True).stdout
    assert out.strip() == "[]"
