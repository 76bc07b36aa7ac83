"""Fixtures of the whole suite: the demo's data set, built once, and nothing a test runs
writing outside the session's temporary directory. The trainer's data cache
(``$XDG_CACHE_HOME/octtrain``), W&B's folders and every other per-user cache point into one
session directory, set before the first test so that the processes the tests start (workers,
trial processes, rank processes) inherit it; the data stores built there are shared by every
test of the session."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from full_disk import FullDisk, available_kind, make_full_disk, release

# A shell starts a background job with SIGINT ignored, and an ignored signal stays ignored in
# every process started from it: the tests that send Ctrl-C (to a worker, a trial process, the
# dashboard) would wait on processes that never get it. Ctrl-C acts here as at a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# Environment variables of per-user folders a test run would otherwise write to under $HOME.
CACHE_ENV = ("XDG_CACHE_HOME", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR",
             "MPLCONFIGDIR", "TRITON_CACHE_DIR")


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every per-user cache of this session (and of the processes it starts) in its tmp dir."""
    root = tmp_path_factory.mktemp("home-cache")
    saved = {name: os.environ.get(name) for name in CACHE_ENV}
    for name in CACHE_ENV:
        os.environ[name] = str(root / name.lower())
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def demo_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's data set as the README's command writes it (``octtrain make-synthetic --seed
    0``: 720 phantom volumes, class 0 = 70 %), written once per session and shared read-only
    by the end-to-end tests (Scenario A baseline and fix, the smoke search). Their data stores
    are built once too, in the session's cache."""
    out = tmp_path_factory.mktemp("demo") / "synthetic"
    proc = subprocess.run([sys.executable, "-m", "octtrain.cli", "make-synthetic", "--out", str(out), "--seed", "0"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {out / 'manifest.csv'}"
    return out / "manifest.csv"


# --- a full disk --------------------------------------------------------------------------------


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Callable[[int], FullDisk]]:
    """``full_disk(room)``: a folder with ``room`` bytes free (a tmpfs, else a file-size limit:
    tests/full_disk.py) and how to run a command with it. Skipped where this host can
    make neither, except under ``CI=true``, where that is a failure."""
    kind = available_kind()
    if kind is None:
        message = "cannot make a full file system: no tmpfs mount (root or unshare), no RLIMIT_FSIZE"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    made: list[FullDisk] = []

    def make(room: int) -> FullDisk:
        made.append(make_full_disk(kind, tmp_path / f"full-{len(made)}", room))
        return made[-1]

    yield make
    for disk in made:
        release(disk)
