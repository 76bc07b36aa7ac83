"""The `octtrain` command end to end: real processes, real files.

The Scenario-A test reproduces the collapse and its fix on synthetic phantoms: the
baseline config's validation predictions collapse onto one class, the fixed config learns.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from full_disk import FullDisk

from octtrain.cli import main
from octtrain.config import load_config
from octtrain.data import build_datasets
from octtrain.synthetic.writer import make_synthetic
from octtrain.tracking.tracker import read_metrics

REPO = Path(__file__).resolve().parents[2]


def octtrain(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PJRT_DEVICE", None)  # CPU: these tests are not about XLA
    return subprocess.run([sys.executable, "-m", "octtrain.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def _train(config: str, manifest: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return octtrain("train", "--config", str(REPO / "configs" / config),
                    "--set", f"data.manifest={manifest}",
                    "--set", "runtime.device=cpu", "--out", str(out), *extra)


@pytest.mark.slow
def test_scenario_a_baseline_collapses(demo_manifest: Path, tmp_path: Path) -> None:
    # 4 of the config's 10 epochs (both warm-up epochs and two at full rate): the collapse is there
    # from epoch 1 on; the whole budget took 90 s of CI's time for the same picture.
    proc = _train("scenario_a_baseline.yaml", demo_manifest, tmp_path / "run", "--set", "train.epochs=4")
    assert proc.returncode == 0, proc.stderr
    epochs = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(epochs) == 4
    for m in epochs:
        assert m["val/max_class_share"] >= 0.9, m["val/pred_hist"]
        assert m["val/majority_class"] == 0
        assert m["val/balanced_accuracy"] <= 0.35
    assert "0_normal" in proc.stdout and "balanced accuracy" in proc.stdout


@pytest.mark.slow
def test_scenario_a_fixed_learns(demo_manifest: Path, tmp_path: Path) -> None:
    proc = _train("scenario_a_fixed.yaml", demo_manifest, tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    epochs = read_metrics(tmp_path / "run" / "metrics.jsonl")
    best = max(m["val/balanced_accuracy"] for m in epochs)
    assert best >= 0.6, [round(m["val/balanced_accuracy"], 3) for m in epochs]
    # The frozen warm-up is the first 3 epochs; the encoder trains from epoch index 3 on.
    assert [m["encoder_trainable"] for m in epochs[:5]] == [False, False, False, True, True]
    # The best epoch's predictions are spread over the classes, not collapsed.
    best_epoch = max(epochs, key=lambda m: m["val/balanced_accuracy"])
    assert best_epoch["val/max_class_share"] < 0.9
    assert min(best_epoch["val/per_class_f1"]) > 0.0
    assert f"best epoch {best_epoch['epoch'] + 1} of" in proc.stdout


def test_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("data: {manifest: m.csv}\ntrain: {lr_head: -1, epochs: zero}\n")
    proc = octtrain("train", "--config", str(cfg))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"octtrain: error: {cfg}: ")
    assert "train.epochs: must be an integer, got 'zero'" in lines[0]
    assert "train.lr_head: must be > 0, got -1.0" in lines[0]


def test_missing_data_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{manifest: {tmp_path / 'nope.csv'}}}\n")
    proc = octtrain("train", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("octtrain: error:") and "nope.csv" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_override_key(tmp_path: Path) -> None:
    proc = octtrain("train", "--config", str(REPO / "configs" / "scenario_a_fixed.yaml"),
                    "--set", "train.lr_heda=0.1")
    assert proc.returncode == 2
    assert "train.lr_heda: unknown key" in proc.stderr


def test_make_synthetic_bad_shares(tmp_path: Path) -> None:
    proc = octtrain("make-synthetic", "--out", str(tmp_path / "d"), "--class-shares", "0.5,0.1,0.1")
    assert proc.returncode == 2
    assert proc.stderr.startswith("octtrain: error:") and "0.5" in proc.stderr


def test_train_small_run_prints_table(small_manifest: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{manifest: {small_manifest}, frames: 16, height: 32, width: 32, cache_dir: {tmp_path / 'c'}}}\n"
        "train: {epochs: 2, batch_size: 4}\nruntime: {device: cpu}\n")
    proc = octtrain("train", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "epoch   1/2" in out and "epoch   2/2" in out
    assert f"run directory: {tmp_path / 'run'}" in out
    for name in ("0_normal", "1_drusen", "2_fluid", "3_atrophy"):
        assert name in out
    assert out.startswith("volumes per class and split (data.classes would pin the classes):\n"
                          "class      train    val   test\n"
                          "0_normal       6      2      2\n")
    assert "total         24      8      8\n" in out

    best = (tmp_path / "run" / "best.pt").read_bytes()
    again = octtrain("train", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert (tmp_path / "run" / "best.pt").read_bytes() == best  # untouched
    (tmp_path / "run" / "last.pt").unlink()  # a run that stopped part-way still is one
    (tmp_path / "run" / "stale.txt").write_text("not a run file")
    replaced = octtrain("train", "--config", str(cfg), "--out", str(tmp_path / "run"),
                        "--overwrite", "--set", "train.epochs=1")
    assert replaced.returncode == 0, replaced.stderr
    assert [r["epoch"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0]
    assert (tmp_path / "run" / "stale.txt").exists()  # only the run's own files are replaced


def test_a_full_disk_is_one_line_exit_1_and_no_temporary_file(
        tiny_manifest: Path, tmp_path: Path, full_disk: Callable[[int], FullDisk]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{manifest: {tiny_manifest}, frames: 4, height: 32, width: 32}}\n"
                   "model: {freeze_encoder: false}\n"  # last.pt holds the encoder: 2.4 MB
                   "train: {epochs: 1, batch_size: 4}\nruntime: {device: cpu}\n")
    build_datasets(load_config(cfg).data)  # the data set store (in the session's cache) exists
    disk = full_disk(64 * 1024)  # config.yaml, class_to_idx.json, metrics.jsonl fit; last.pt not
    run = disk.path / "run"
    proc = disk.run([sys.executable, "-m", "octtrain.cli", "train", "--config", str(cfg),
                     "--out", str(run), "--quiet"])
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"octtrain: error: {disk.cause} writing the last checkpoint {run / 'last.pt'}"]
    kept = disk.kept / "run"
    assert sorted(os.listdir(kept)) == ["class_to_idx.json", "config.yaml", "metrics.jsonl"]
    assert [r["epoch"] for r in read_metrics(kept / "metrics.jsonl", "train")] == [0]


def test_a_label_outside_data_classes_is_one_line_and_exit_2(small_manifest: Path,
                                                              tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{manifest: {small_manifest}, classes: [0_normal, 1_drusen, 2_fluid, "
                   f"3_atrohpy], cache_dir: {tmp_path / 'c'}}}\nruntime: {{device: cpu}}\n")
    proc = octtrain("train", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stdout == ""  # no class table: the classes are pinned
    line = next(i for i, row in enumerate(small_manifest.read_text().splitlines(), 1)
                if row.split(",")[1] == "3_atrophy")
    assert proc.stderr == (
        "octtrain: error: label(s) not in data.classes ['0_normal', '1_drusen', '2_fluid', "
        f"'3_atrohpy']: '3_atrophy' (first in {small_manifest} line {line})\n")


@pytest.fixture
def own_data(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A small phantom set this test may spoil: its manifest and its volumes in manifest order."""
    manifest = make_synthetic(tmp_path / "data", n_volumes=24, frames=4, height=16, width=16,
                              volumes_per_patient=1, class_shares=(0.25, 0.25, 0.25, 0.25), seed=5)
    rows = list(csv.DictReader(manifest.open()))
    return manifest, [manifest.parent / row["path"] for row in rows]


def _own_train(manifest: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{manifest: {manifest}, frames: 4, height: 16, width: 16, "
                   f"test_fraction: 0, cache_dir: {tmp_path / 'cache'}}}\n"
                   "train: {epochs: 1, batch_size: 2}\n"
                   "runtime: {device: cpu}\n")
    return octtrain("train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet",
                    *extra)


def test_constant_volumes_are_one_warning_with_their_count(own_data: tuple[Path, list[Path]],
                                                           tmp_path: Path) -> None:
    manifest, volumes = own_data
    for v in volumes[:4]:
        np.save(v, np.full(np.load(v).shape, 3.0, np.float32))
    proc = _own_train(manifest, tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1
    assert warnings[0].startswith("octtrain: warning: 4 volume(s) are constant (blank after the "
                                  "intensity clip: they are read as all zeros): ")
    named = re.findall(r"(train|val): ([^;]+)", warnings[0].split("zeros): ")[1])
    assert sorted(path for _, paths in named for path in paths.split(", ")) == sorted(
        str(v) for v in volumes[:4])  # no more than 3 of a split, so all 4 named


def test_a_non_finite_volume_stops_the_run_before_training(own_data: tuple[Path, list[Path]],
                                                           tmp_path: Path) -> None:
    manifest, volumes = own_data
    spoilt = np.load(volumes[5]).astype(np.float32)
    spoilt[0, 1, 2] = np.nan
    np.save(volumes[5], spoilt)
    proc = _own_train(manifest, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == (f"octtrain: error: {volumes[5]}: volume holds 1 NaN or infinite "
                           f"value(s) of {spoilt.size}\n")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_nonfinite_replace_trains_and_counts_the_volumes_once(
        own_data: tuple[Path, list[Path]], tmp_path: Path) -> None:
    manifest, volumes = own_data
    for v, bad in ((volumes[5], np.nan), (volumes[7], np.inf)):
        spoilt = np.load(v).astype(np.float32)
        spoilt[0, 1, :3] = bad
        np.save(v, spoilt)
    proc = _own_train(manifest, tmp_path, "--set", "data.nonfinite=replace")
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stderr.splitlines() if "NaN" in line]
    assert len(notes) == 1 and notes[0].startswith(
        "octtrain: 2 volume(s) held NaN or infinite values, replaced by 0 (data.nonfinite: replace): ")
    named = re.findall(r"(train|val): ([^;]+)", notes[0].split("replace): ")[1])
    assert sorted(path for _, paths in named for path in paths.split(", ")) == sorted(
        [str(volumes[5]), str(volumes[7])])
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_an_existing_run_is_refused_without_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{manifest: {tmp_path / 'm.csv'}}}\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("old: run\n")
    (run / "metrics.jsonl").write_text("{}\n")
    assert main(["train", "--config", str(cfg), "--out", str(run)]) == 2
    assert capsys.readouterr().err == (
        f"octtrain: error: --out '{run}' already holds a run (config.yaml, metrics.jsonl): pass "
        "--overwrite to replace it, or choose another --out\n")
    assert (run / "config.yaml").read_text() == "old: run\n"
    # --overwrite deletes the old run's files before training starts (here: it fails on data)
    assert main(["train", "--config", str(cfg), "--out", str(run), "--overwrite"]) == 2
    assert "m.csv: manifest not found" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]  # the new run's
    assert (run / "config.yaml").read_text() != "old: run\n"


# ---- make-synthetic, in process ----------------------------------------------------------------


def _params(out: Path) -> dict[str, object]:
    params: dict[str, object] = json.loads((out / "classes.json").read_text())["params"]
    return params


def test_make_synthetic_passes_every_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "d"
    assert main(["make-synthetic", "--out", str(out), "--n-volumes", "8", "--frames", "2",
                 "--height", "16", "--width", "16", "--class-shares", "0.25,0.25,0.25,0.25",
                 "--volumes-per-patient", "1", "--difficulty", "2", "--noise", "0.1",
                 "--format", "npz", "--seed", "4", "--anatomy-variation", "0.5",
                 "--lesion", "drusen_height=3", "--lesion", "drusen_count=1,1"]) == 0
    assert capsys.readouterr().out == f"wrote {out / 'manifest.csv'}\n"
    with (out / "manifest.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(r["path"].endswith(".npz") for r in rows)
    params = _params(out)
    assert params["lesions_reference"]["drusen_height"] == 3.0  # type: ignore[index]
    assert params["lesions_reference"]["drusen_count"] == [1, 1]  # type: ignore[index]
    assert params["lesions_scaled"]["drusen_height"] == 3.0 * 16 / 64 / 2  # type: ignore[index]
    assert (params["difficulty"], params["noise"], params["seed"]) == (2.0, 0.1, 4)
    assert params["anatomy_variation"] == 0.5


def test_make_synthetic_options_left_out_keep_the_generators_defaults(tmp_path: Path) -> None:
    small = ["--n-volumes", "8", "--frames", "2", "--height", "16", "--width", "16"]
    assert main(["make-synthetic", "--out", str(tmp_path / "cli"), *small]) == 0
    make_synthetic(tmp_path / "lib", n_volumes=8, frames=2, height=16, width=16)
    assert _params(tmp_path / "cli") == _params(tmp_path / "lib")
    assert (tmp_path / "cli" / "manifest.csv").read_text() == (tmp_path / "lib" / "manifest.csv").read_text()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--class-shares", "0.7,0.1,x,0.1"], "got '0.7,0.1,x,0.1'"),
        (["--class-shares", "0.5,0.5"], "needs 4 values"),
        (["--lesion", "drusen_size=3"], "got 'drusen_size=3'"),
        (["--lesion", "fluid_width=wide"], "fluid_width: bad value 'wide'"),
    ],
)
def test_make_synthetic_bad_values_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str,
) -> None:
    assert main(["make-synthetic", "--out", str(tmp_path / "d"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("octtrain: error: ") and message in err and err.count("\n") == 1


def test_sigterm_writes_a_resume_checkpoint_exit_143_then_resume_finishes(
        small_manifest: Path, tmp_path: Path) -> None:
    """SIGTERM stops `octtrain train` at the next optimizer step with status 143 and resume.pt;
    the same command with --resume finishes the run, every epoch in metrics.jsonl once."""
    import signal
    import time

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data: {{manifest: {small_manifest}, frames: 16, height: 32, width: 32, cache_dir: {tmp_path / 'c'}}}\n"
        "train: {epochs: 6, batch_size: 2}\nruntime: {device: cpu}\n")
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "octtrain.cli", "train", "--config", str(cfg), "--out", str(run)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("PJRT_DEVICE", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:  # the first epoch's line: it is training epoch 2 now
        if line.startswith("epoch   1/6"):
            break
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    assert proc.returncode == 143, err
    assert "octtrain: preempted by SIGTERM at epoch 1, micro-batch" in err
    assert took < 10, took
    assert (run / "resume.pt").exists()

    refused = octtrain("train", "--config", str(cfg), "--out", str(run))
    assert refused.returncode == 2
    assert "pass --overwrite to replace it, --resume to continue it" in refused.stderr
    resumed = octtrain("train", "--config", str(cfg), "--out", str(run), "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [0, 1, 2, 3, 4, 5]
    assert not (run / "resume.pt").exists()
    again = octtrain("train", "--config", str(cfg), "--out", str(run), "--resume")
    assert again.returncode == 2 and "holds no resume checkpoint (resume.pt" in again.stderr
