"""Pre-flight: a search whose trials could only fail is refused before any trial is created.

The refusals run the real ``octsearch`` console script: one line on stderr, exit status 2, and
no study (the SQLite file is never created) and no run directory left behind.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from search_testing import fake_env, octsearch_command, write_cli_space, write_dataset

from octtrain.config.sections import DataSection
from octtrain.config.train_config import config_from_dict
from search.errors import PreflightError
from search.worker.preflight import (
    CHECKPOINT_BYTES_PER_PARAMETER,
    check_data,
    check_device,
    check_host,
    needed_bytes,
    preflight,
    sample,
)


@pytest.mark.parametrize(("n", "picked"), [(0, []), (2, [0, 1]), (3, [0, 1, 2]),
                                           (10, [0, 4, 9]), (101, [0, 50, 100])])
def test_the_sample_spreads_over_the_dataset(n: int, picked: list[int]) -> None:
    assert sample(list(range(n))) == picked  # type: ignore[arg-type]


def test_a_readable_dataset_is_described(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path / "data", n=5)
    assert check_data(DataSection(manifest=str(manifest))) == (
        f"5 volumes in {manifest}; 3 of them read")


def test_a_corrupt_sampled_volume_is_named(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path / "data", n=5)
    (tmp_path / "data" / "v4.npy").write_bytes(b"not a numpy file")  # the last one is sampled
    with pytest.raises(PreflightError, match=r"data.manifest '.*manifest.csv': .*v4.npy: "
                                             "cannot read volume"):
        check_data(DataSection(manifest=str(manifest)))


def test_a_relative_manifest_names_the_folder_it_was_looked_for_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PreflightError) as info:
        check_data(DataSection(manifest="data/manifest.csv"))
    assert str(info.value) == (f"data.manifest 'data/manifest.csv' (relative to {tmp_path}): "
                               "data/manifest.csv: manifest not found")


def test_cpu_and_auto_are_always_available() -> None:
    assert check_device("cpu") == "cpu"
    assert check_device("auto") == "auto"


def test_preflight_checks_data_and_the_device_that_replaces_the_configs(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path / "data")
    cfg = config_from_dict({"data": {"manifest": str(manifest)}, "runtime": {"device": "xla"}})
    assert preflight(cfg, "cpu") == [f"data: 4 volumes in {manifest}; 3 of them read",
                                      "device: cpu (available)"]


def refused(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
            space: Path | None = None) -> str:
    """Run ``octsearch ARGS`` in ``tmp_path``; its one error line, once shown to be a refusal
    that created nothing."""
    storage = tmp_path / "study.db"
    command = args[0]
    rest = ["--space", str(space or write_cli_space(tmp_path / "space.yaml")), *args[1:]]
    if command == "run":
        rest = ["--trials", "1", *rest]
        if "--storage" not in args:
            rest = [*rest, "--storage", f"sqlite:///{storage}"]
    proc = subprocess.run(octsearch_command(command, *rest), cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=env or fake_env())
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("octsearch: error: "), lines
    assert not storage.exists() and not (tmp_path / "octsearch.db").exists()  # no study
    assert not (tmp_path / "runs").exists()  # no trial
    return lines[0].removeprefix("octsearch: error: ")


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_missing_manifest_is_refused(command: str, tmp_path: Path) -> None:
    space = write_cli_space(tmp_path / "space.yaml")
    space.write_text(space.read_text().replace(str(tmp_path / "data" / "manifest.csv"),
                                               "elsewhere/manifest.csv"))
    missing = tmp_path / "elsewhere" / "manifest.csv"  # relative to the space file's folder
    assert refused(tmp_path, command, space=space) == (
        f"data.manifest '{missing}': {missing}: manifest not found")


def test_an_unreadable_manifest_is_refused(tmp_path: Path) -> None:
    space = write_cli_space(tmp_path / "space.yaml")
    manifest = tmp_path / "data" / "manifest.csv"
    manifest.write_bytes(b"\xff\xfe\x00 not text")
    assert refused(tmp_path, "run", space=space).startswith(
        f"data.manifest '{manifest}': {manifest}: cannot read manifest (")


def test_an_unreadable_volume_is_refused(tmp_path: Path) -> None:
    space = write_cli_space(tmp_path / "space.yaml")
    np.save(tmp_path / "data" / "v0.npy", np.zeros((2, 3, 4, 5), dtype=np.float32))  # 4-D
    assert "v0.npy: expected a 3-D (D, H, W) volume, got shape (2, 3, 4, 5)" in (
        refused(tmp_path, "run", space=space))


@pytest.mark.parametrize("command", ["run", "check"])
def test_cuda_on_a_host_without_it_is_refused(command: str, tmp_path: Path) -> None:
    hidden = fake_env(CUDA_VISIBLE_DEVICES="")  # no CUDA device, on any host
    assert refused(tmp_path, command, "--device", "cuda", env=hidden) == (
        "device 'cuda': no CUDA device is available on this host")


def test_xla_without_a_pjrt_device_is_refused(tmp_path: Path) -> None:
    if Path("/dev/accel0").exists() or Path("/dev/vfio/0").exists():
        pytest.skip("this host has a TPU")
    env = {k: v for k, v in fake_env().items() if k != "PJRT_DEVICE"}
    assert refused(tmp_path, "run", "--device", "xla", env=env) in (
        "device 'xla': torch_xla is not installed on this host (pip install 'octsearch[xla]')",
        "device 'xla': no PJRT device on this host (no TPU found and PJRT_DEVICE is not set; "
        "PJRT_DEVICE=CPU runs XLA on the CPU)")


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_an_in_memory_study_is_refused(url: str, tmp_path: Path) -> None:
    assert refused(tmp_path, "run", "--storage", url) == (
        f"{url!r} is an in-memory SQLite database, which "
        "trial processes cannot see: use sqlite:///FILE")


@pytest.mark.parametrize("timeout", ["0", "-5"])
def test_a_timeout_that_leaves_no_time_is_refused(timeout: str, tmp_path: Path) -> None:
    assert refused(tmp_path, "run", "--timeout", timeout) == (
        f"--timeout must be a positive number of seconds, got {timeout}")


def test_relative_paths_are_resolved_against_the_space_file(tmp_path: Path) -> None:
    """A space's relative data paths name the same files from any working directory: they are
    resolved against the space file's folder (the trial processes get them absolute)."""
    space = write_cli_space(tmp_path / "spaces" / "space.yaml")
    space.write_text(space.read_text().replace(str(space.parent / "data" / "manifest.csv"),
                                               "data/manifest.csv"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(octsearch_command("check", "--space", str(space)), cwd=elsewhere,
                          capture_output=True, text=True, timeout=120, env=fake_env())
    assert proc.returncode == 0, proc.stderr
    manifest = space.parent / "data" / "manifest.csv"
    assert f"data: 4 volumes in {manifest}; 3 of them read" in proc.stdout
    assert os.getcwd() != str(elsewhere)  # the test itself ran elsewhere


def test_a_worker_started_from_another_directory_runs_the_space(tmp_path: Path) -> None:
    space = write_cli_space(tmp_path / "spaces" / "space.yaml")
    space.write_text(space.read_text().replace(str(space.parent / "data" / "manifest.csv"),
                                               "data/manifest.csv"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(octsearch_command("run", "--space", str(space), "--trials", "1",
                                            "--storage", f"sqlite:///{tmp_path / 'study.db'}"),
                          cwd=elsewhere, capture_output=True, text=True, timeout=120,
                          env=fake_env())
    assert proc.returncode == 0, proc.stderr
    (request,) = (elsewhere / "runs").glob("space-*/trial_0000/request.json")
    config = json.loads(request.read_text())["config"]
    assert config["data"]["manifest"] == str(space.parent / "data" / "manifest.csv")


def test_a_runs_dir_that_is_a_file_is_refused_before_the_study(tmp_path: Path) -> None:
    """The reported case: the study was created and its three enqueued trials failed one after
    the other (NotADirectoryError), their configurations lost."""
    (tmp_path / "runs-file").write_text("not a folder")
    assert refused(tmp_path, "run", "--runs-dir", "runs-file/sub") == (
        f"--runs-dir 'runs-file/sub' (its parent '{tmp_path / 'runs-file'}'): not a folder")


def test_a_data_cache_that_cannot_be_written_is_refused(tmp_path: Path) -> None:
    space = write_cli_space(tmp_path / "space.yaml")
    raw = yaml.safe_load(space.read_text())
    raw["base"]["data"]["cache_dir"] = str(tmp_path / "cache")
    space.write_text(yaml.safe_dump(raw))
    (tmp_path / "cache").write_text("a file where the cache should be")
    assert refused(tmp_path, "run", space=space) == f"data.cache_dir '{tmp_path / 'cache'}': not a folder"


def test_the_host_check_names_each_folder_and_the_room_needed(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path / "data")  # 4 volumes
    cfg = config_from_dict({"data": {"manifest": str(manifest), "cache_dir": str(tmp_path / "cache")},
                            "model": {"encoder": "vitl-random"}})
    need = needed_bytes(cfg, 4, 2)
    params = 24 * (4 + 8) * 1024 ** 2  # ViT-L: within 1 % of its 303 M encoder parameters
    assert need == {"checkpoints": 2 * CHECKPOINT_BYTES_PER_PARAMETER * params,
                    "store": 4 * math.prod(cfg.data.shape) * 2}  # float16 store
    lines = check_host(cfg, {"--runs-dir": tmp_path / "runs"}, trials_at_once=2)
    assert lines[:2] == [f"--runs-dir {tmp_path / 'runs'}: writable",
                         f"data.cache_dir {tmp_path / 'cache'}: writable"]
    total = (need["checkpoints"] + need["store"]) / 1e9
    assert lines[2].startswith("disk: ") and lines[2].endswith(
        f" free for about {total:.2f} GB (--runs-dir {need['checkpoints'] / 1e9:.2f} GB, "
        f"data.cache_dir {need['store'] / 1e6:.1f} MB)")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # nothing made
    with pytest.raises(PreflightError, match=r"^not enough disk space for the trials: .* free for .*, about "):
        check_host(cfg, {"--runs-dir": tmp_path / "runs"}, trials_at_once=10**7)  # petabytes
