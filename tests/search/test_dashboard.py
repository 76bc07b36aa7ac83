"""``octsearch dashboard``: optuna-dashboard serves a study, its trials and intermediate values."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest
from search_testing import PASSWORD, STUCK_REASON, free_port, secret_url

from search.contract import epoch_metrics


def get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return json.loads(response.read())


def start_dashboard(url: str, port: int, *args: str) -> subprocess.Popen[str]:
    """``octsearch dashboard`` on ``port``, once it answers."""
    exe = Path(sys.executable).parent / "octsearch"
    proc = subprocess.Popen([str(exe), "dashboard", "--storage", url, "--port", str(port), *args],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            get(port, "/api/meta")
            return proc
        except OSError:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "dashboard did not start in 60 s"
            time.sleep(0.3)


def study_detail(port: int, name: str) -> Any:
    studies = get(port, "/api/studies")["study_summaries"]
    (summary,) = [s for s in studies if s["study_name"] == name]
    return summary["study_id"], get(port, f"/api/studies/{summary['study_id']}")


def test_dashboard_serves_the_study(reviewed_study: tuple[str, str]) -> None:
    url, name = reviewed_study
    port = free_port()
    proc = start_dashboard(url, port)
    try:
        _, detail = study_detail(port, name)
        pruned, failed, complete = detail["trials"]
        assert [t["state"] for t in detail["trials"]] == ["Pruned", "Fail", "Complete"]
        assert [v["step"] for v in pruned["intermediate_values"]] == [0, 1, 2]
        assert pruned["intermediate_values"][0]["value"] == 0.25
        attrs = {a["key"]: a["value"] for a in pruned["user_attrs"]}
        assert attrs["prune_reason"] == STUCK_REASON
        assert not [k for k in attrs if "epoch_" in k]  # epoch records: not on the dashboard's pages
        first = optuna.load_study(study_name=name, storage=url).trials[0]
        assert (epoch_metrics(first, 0) or {})["val/pred_hist"] == [31, 1, 0, 0]
        assert complete["values"] == [0.9]
        assert len(complete["intermediate_values"]) == 6
        assert detail["best_trials"][0]["number"] == 2
        assert detail["objective_names"] == ["balanced_accuracy"]
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
        assert proc.stderr is not None
        assert f"http://127.0.0.1:{port}/" in proc.stderr.read()


@pytest.mark.postgres
def test_the_banner_hides_the_storage_password() -> None:
    port = free_port()
    exe = Path(sys.executable).parent / "octsearch"
    env = {**os.environ, "OCTSEARCH_STORAGE": secret_url()}  # no --storage on the command line
    proc = subprocess.Popen([str(exe), "dashboard", "--port", str(port)], stderr=subprocess.PIPE,
                            text=True, env=env)
    try:
        assert proc.stderr is not None
        banner = proc.stderr.readline()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert banner.startswith("octsearch: optuna-dashboard for postgresql+psycopg://postgres:***@")
    assert f"http://127.0.0.1:{port}/" in banner and PASSWORD not in banner


def test_dashboard_serves_trial_notes_study_figures_and_artifacts(
    evidence_study: tuple[str, str, Path],
) -> None:
    url, name, runs = evidence_study
    port = free_port()
    proc = start_dashboard(url, port, "--artifacts-dir", str(runs / "artifacts"))
    try:
        study_id, detail = study_detail(port, name)
        pruned, failed, complete = detail["trials"]
        assert pruned["note"]["body"].startswith("## Trial 0: PRUNED (collapses)")
        assert STUCK_REASON in pruned["note"]["body"]
        assert "| fluid | 0.9 | 0.9 | 6 |" in complete["note"]["body"]
        assert {g["id"] for g in detail["plotly_graph_objects"]} == {
            "per-class-accuracy-top-trials", "majority-class-share", "prune-reasons-by-epoch"}
        artifacts = {a["filename"]: a for a in complete["artifacts"]}
        assert sorted(artifacts) == ["config.yaml", "metrics.jsonl"]
        meta = get(port, "/api/meta")
        assert meta["artifact_is_available"] is True
        path = f"/artifacts/{study_id}/{complete['trial_id']}/{artifacts['config.yaml']['artifact_id']}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            served = response.read()
        assert served == (Path(complete_run_dir(complete)) / "config.yaml").read_bytes()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


def complete_run_dir(trial: dict[str, Any]) -> str:
    return str({a["key"]: a["value"] for a in trial["user_attrs"]}["run_dir"])
