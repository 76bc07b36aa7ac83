"""Helpers of the search tests: server URLs, the fake-trainer space and worker options."""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import sqlalchemy
import yaml

from search.cli import trial_end_callbacks
from search.storage.sql import open_storage
from search.worker import DEFAULT_KEEP_BEST, WorkerOptions

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # the venv's console scripts
SERVER_URLS = {
    "postgres": ("OCTSEARCH_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    "mysql": ("OCTSEARCH_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test"),
}

# Why the fake trainer's collapsing trial is pruned (at epoch 2): its predictions never move.
STUCK_REASON = ("stuck: 96% of validation predictions are class 0, unchanged for 3 epochs (epochs 0-2); "
                "training balanced accuracy <= 0.25 (chance 0.25), validation loss >= 1.40 (class prior 1.24)")

# A space for the fake trainer (tests/search/fake_fit.py): hidden 0 collapses, hidden 64 learns.
FAKE_SPACE: dict[str, Any] = {
    "base": {
        "data": {"manifest": "unused.csv"},
        "model": {"unfreeze_at_epoch": -1},
        "train": {"epochs": 6},
    },
    "params": {
        "model.head.hidden": {"type": "categorical", "choices": [0, 64]},
        "train.lr_head": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    },
    "sampler": {"type": "random"},
    "pruner": {"collapse": {"patience": 2, "grace_epochs": 1}},
}


def reachable_server(kind: str) -> str:
    """The URL of the test server ``kind``; skip (laptop) or fail (CI=true) if unreachable."""
    env, default = SERVER_URLS[kind]
    url = os.environ.get(env, default)
    try:
        engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 5})
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as err:  # noqa: BLE001 - any failure to connect means "no server here"
        message = f"{kind} test server {url} is unreachable: {type(err).__name__}: {err}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


PASSWORD = "s3cretPW"


def secret_url() -> str:
    """The PostgreSQL test server's URL with a password (trust authentication ignores it)."""
    url = sqlalchemy.engine.make_url(reachable_server("postgres"))
    return url.set(password=PASSWORD).render_as_string(hide_password=False)


def fake_options(tmp_path: Path, n_trials: int, *, keep_best: int = DEFAULT_KEEP_BEST, keep_last: bool = False,
                 artifacts_dir: Path | None = None, **kwargs: Any) -> WorkerOptions:
    """Worker options that run trials with the fake trainer, fast, with the trial-end callbacks
    of ``octsearch run`` (review evidence, checkpoint retention)."""
    return WorkerOptions(
        n_trials=n_trials, runs_dir=tmp_path / "runs", fit_target="fake_fit:fit",
        env={"PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])},
        poll_s=0.2, on_trial_end=trial_end_callbacks(tmp_path / "runs", artifacts_dir, keep_best, keep_last),
        **kwargs,
    )


def signal_when_written(path: Path, sig: signal.Signals, timeout: float = 300.0) -> None:
    """In the background: send ``sig`` to this process once ``path`` exists (e.g. a hanging
    trial's pid file), a real signal as from a terminal or a scheduler; after ``timeout`` s
    without it, anyway. (60 s was too short on a loaded 2-core machine: the trial process was
    still importing torch, the signal came before its pid file, and its hang outlived the test.)"""
    def wait_and_signal() -> None:
        deadline = time.monotonic() + timeout
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        os.kill(os.getpid(), sig)

    threading.Thread(target=wait_and_signal, daemon=True).start()


def run_threads(target: Callable[[], object], n: int, timeout: float) -> list[BaseException]:
    """Run ``target`` in ``n`` threads at once; the exceptions they raised (empty: all fine)."""
    errors: list[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as err:  # noqa: BLE001 - returned to the test
            errors.append(err)

    threads = [threading.Thread(target=guarded) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout)
    return errors


def write_dataset(folder: Path, n: int = 4) -> Path:
    """A real manifest of ``n`` small ``.npy`` volumes, one patient each, classes 0..3 in turn;
    what pre-flight reads before ``octsearch run`` starts a trial."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["path,label,patient_id"]
    for i in range(n):
        np.save(folder / f"v{i}.npy", np.full((4, 8, 8), float(i), dtype=np.float32))
        rows.append(f"v{i}.npy,{i % 4},p{i}")
    manifest = folder / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    return manifest


def write_cli_space(path: Path, **changes: Any) -> Path:
    """The fake-trainer space as a file whose manifest exists (next to it, under data/)."""
    raw = copy.deepcopy(FAKE_SPACE)
    raw["base"]["data"]["manifest"] = str(write_dataset(path.parent / "data"))
    raw.update(changes)
    path.write_text(yaml.safe_dump(raw))
    return path


def octsearch_command(*args: str) -> list[str]:
    """``octsearch ARGS`` as a user runs it (the console script), with the fake trainer for
    ``run``; start it with :func:`fake_env`."""
    command = [str(BIN / "octsearch"), *args]
    return [*command, "--fit-target", "fake_fit:fit"] if args[:1] == ("run",) else command


def fake_env(**extra: str) -> dict[str, str]:
    """The environment of an ``octsearch`` process whose trial processes import ``fake_fit``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
            **extra}


def drop_study(url: str, name: str) -> None:
    """Delete the study ``name`` from ``url`` if a test created it (a test's clean-up)."""
    storage = open_storage(url, heartbeat=False)
    if name in optuna.study.get_all_study_names(storage):
        optuna.delete_study(study_name=name, storage=storage)
    storage.engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PROXY_START_TIMEOUT_S = 60.0


@contextmanager
def storage_proxy(database_url: str, folder: Path) -> Iterator[str]:
    """`octsearch serve-storage` in front of ``database_url`` on a free port (log in
    ``folder/proxy.log``); its grpc:// URL. Stopped with SIGTERM afterwards: exit 143 and its
    last line say it stopped cleanly."""
    port = free_port()
    log = folder / "proxy.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(octsearch_command("serve-storage", "--storage", database_url, "--port", str(port)),
                                cwd=folder, env=fake_env(), stdout=out, stderr=subprocess.STDOUT)
    url = f"grpc://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + PROXY_START_TIMEOUT_S
        while f"use --storage {url}" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=30)
    assert returncode == 128 + signal.SIGTERM, log.read_text()
    assert log.read_text().splitlines()[-1] == "octsearch: storage proxy stopped"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (dead, not yet reaped by its new parent) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def trial_pids(root: Path) -> list[int]:
    """Pids of the trial processes running a request under ``root``."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"search.trial" in args and any(a.startswith(str(root).encode()) for a in args):
            pids.append(int(cmdline.parent.name))
    return [p for p in pids if alive(p)]
