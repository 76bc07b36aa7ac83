"""``octsearch`` error paths and review commands, run in-process and as the console script."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from fake_fit import CRASH
from search_testing import (
    FAKE_SPACE,
    PASSWORD,
    fake_env,
    octsearch_command,
    secret_url,
    write_cli_space,
)

from search.cli import main
from search.errors import SearchSpaceError
from search.storage.sql import open_storage

REPO = Path(__file__).resolve().parents[2]


def write_space(path: Path, **changes: object) -> Path:
    raw = copy.deepcopy(FAKE_SPACE)
    raw.update(changes)
    path.write_text(yaml.safe_dump(raw))
    return path


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("octsearch: error: ")
    return err[0]


def test_invalid_space_is_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    space = write_space(tmp_path / "bad.yaml",
                        params={"model.head.hiden": {"type": "int", "low": 0, "high": 8}})
    assert main(["check", "--space", str(space)]) == 2
    line = one_error_line(capsys)
    assert (f"{space}: params.model.head.hiden: unknown key: not a trainer config setting "
            "(did you mean model.head.hidden?)") in line
    with pytest.raises(SearchSpaceError):
        main(["check", "--space", str(space), "--debug"])


def test_check_lists_a_valid_space(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    space = write_cli_space(tmp_path / "ok.yaml")
    assert main(["check", "--space", str(space)]) == 0
    out = capsys.readouterr().out
    assert f"data: 4 volumes in {tmp_path / 'data' / 'manifest.csv'}; 3 of them read" in out
    assert "device: auto (available)" in out
    assert "model.head.hidden: categorical [0, 64]" in out
    assert "train.lr_head: float [0.0001, 0.01] log" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trials", "0"], "--trials must be at least 1, got 0"),
        (["--trials", "1", "--storage", "redis://localhost"], "unsupported storage 'redis'"),
        (["--trials", "1", "--max-failures", "0"], "--max-failures must be at least 1, got 0"),
        (["--trials", "1", "--keep-best", "-1"], "--keep-best must be at least 0, got -1"),
        (["--trials", "1", "--timeout", "-5"], "--timeout must be a positive number of seconds, "
                                               "got -5"),
    ],
)
def test_run_refuses_bad_arguments(args: list[str], message: str, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    space = write_space(tmp_path / "ok.yaml")
    assert main(["run", "--space", str(space), *args]) == 2
    assert message in one_error_line(capsys)


def test_run_refuses_to_join_a_study_with_another_space(
    tmp_path: Path, reviewed_study: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url, name = reviewed_study
    space = write_cli_space(tmp_path / f"{name}.yaml")  # study name from the file name
    assert main(["run", "--space", str(space), "--trials", "9", "--storage", url]) == 2
    line = one_error_line(capsys)
    assert "refusing to join study 'reviewed'" in line
    assert "enqueue: stored [" in line  # the stored space enqueued three trials


def test_review_commands(reviewed_study: tuple[str, str], tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    url, name = reviewed_study
    assert main(["trials", "--storage", url]) == 0  # the storage's only study
    assert capsys.readouterr().out.splitlines()[-1].split()[:2] == ["2", "COMPLETE"]
    assert main(["trials", "--storage", url, "--state", "pruned", "--columns", "number,name,end",
                 "--format", "csv"]) == 0
    assert capsys.readouterr().out == "#,name,end\n0,collapses,stuck@2\n"
    assert main(["trial", "1", "--storage", url]) == 0
    assert "  reason: RuntimeError: boom" in capsys.readouterr().out
    assert main(["trial", "9", "--storage", url]) == 2
    assert one_error_line(capsys) == f"octsearch: error: study {name!r} has no trial 9 (it has trials 0-2)"
    assert main(["best", "--storage", url, "--study", name]) == 0
    assert "best trial 2 (learns)" in capsys.readouterr().out
    out = tmp_path / "best.yaml"
    assert main(["export-best", "--storage", url, "--out", str(out)]) == 0
    assert f"reproduce with: octtrain train --config {out}" in capsys.readouterr().err
    assert out.exists()
    assert main(["export-best", "--storage", url, "--out", str(out), "--trial", "0"]) == 2
    assert "trial 0 of study 'reviewed' is PRUNED, not COMPLETE" in one_error_line(capsys)


def test_review_of_a_missing_study(reviewed_study: tuple[str, str],
                                   capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url, _ = reviewed_study
    assert main(["best", "--storage", url, "--study", "nope"]) == 2
    assert "no study 'nope' in 'sqlite:///" in one_error_line(capsys)
    empty = tmp_path / "empty.db"
    assert main(["trials", "--storage", f"sqlite:///{empty}"]) == 2
    assert f"no SQLite database '{empty}'" in one_error_line(capsys)
    assert not empty.exists()  # a review command never creates a study database
    open_storage(f"sqlite:///{empty}", heartbeat=False).engine.dispose()
    assert main(["trials", "--storage", f"sqlite:///{empty}"]) == 2
    assert "holds 0 studies (none): name one with --study or --space" in one_error_line(capsys)


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "octsearch"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("run", "check", "trials", "best", "export-best", "dashboard"):
        assert command in result.stdout


def test_driver_error_with_newlines_is_one_line(tmp_path: Path) -> None:
    """psycopg's connection errors span two lines; the CLI still prints one."""
    space = write_cli_space(tmp_path / "space.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", "--space", str(space),
         "--trials", "1", "--storage", "postgresql+psycopg://nobody@127.0.0.1:1/none"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("octsearch: error: cannot open storage")


def stored_text(url: str, name: str) -> str:
    """Everything octsearch and Optuna stored about the study, as one text."""
    storage = open_storage(url, heartbeat=False)
    study = optuna.load_study(study_name=name, storage=storage)
    study_id = storage.get_study_id_from_name(name)
    parts: list[object] = [study.user_attrs, storage.get_study_system_attrs(study_id)]
    for t in study.get_trials():
        parts += [t.user_attrs, t.system_attrs, t.params]
    storage.engine.dispose()
    return json.dumps(parts, default=str)


@pytest.mark.postgres
def test_a_storage_password_appears_nowhere(tmp_path: Path) -> None:
    """The URL comes from $OCTSEARCH_STORAGE (off the command line), once from --storage; the
    password is in no output, no file of the run directories and nothing stored."""
    url = secret_url()
    name = f"secret-{uuid.uuid4().hex[:8]}"
    space = write_cli_space(tmp_path / "space.yaml", enqueue=[
        {"name": "collapses", "params": {"model.head.hidden": 0, "train.lr_head": 1e-3}},
        {"name": "crashes", "params": {"model.head.hidden": 64, "train.lr_head": CRASH}},
        {"name": "learns", "params": {"model.head.hidden": 64, "train.lr_head": 1e-3}}])
    env = fake_env(OCTSEARCH_STORAGE=url)
    commands = [("run", "--space", str(space), "--trials", "2", "--study", name),
                ("run", "--space", str(space), "--trials", "2", "--study", name, "--storage", url),
                ("trials", "--study", name), ("best", "--study", name)]
    try:
        outputs = []
        for args in commands:
            proc = subprocess.run(octsearch_command(*args), cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr
            outputs.append(proc.stdout + proc.stderr)
        assert "postgresql+psycopg://postgres:***@" in outputs[0]  # the banner, redacted
        assert "fake epoch 5" in outputs[0] and "2  COMPLETE" in outputs[2]  # the search ran
        files = [p for p in tmp_path.rglob("*") if p.is_file()]
        assert any(p.name == "request.json" for p in files) and any(p.name == "trial.log" for p in files)
        for path in files:
            if path != space:
                assert PASSWORD.encode() not in path.read_bytes(), path
        for text in (*outputs, stored_text(url, name)):
            assert PASSWORD not in text
    finally:
        storage = open_storage(url, heartbeat=False)
        if name in optuna.study.get_all_study_names(storage):
            optuna.delete_study(study_name=name, storage=storage)
        storage.engine.dispose()


def test_help_names_the_storage_variable_but_not_its_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OCTSEARCH_STORAGE", f"postgresql+psycopg://u:{PASSWORD}@h/db")
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "$OCTSEARCH_STORAGE" in out and PASSWORD not in out
