"""``octsearch finalize``: the best trial retrained with the real (tiny) trainer and evaluated
once on the test split of phantom data; a second look at the same split is refused."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import optuna
import pytest

from octtrain.synthetic.writer import make_synthetic
from octtrain.tracking.wandb_run import read_offline_run
from search.cli import main
from search.contract import TEST_METRICS_ATTR, write_best_epoch, write_overrides, write_run
from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study.join import open_study

CLASSES = ["0_normal", "1_drusen", "2_fluid", "3_atrophy"]


@pytest.fixture
def searched(tmp_path: Path) -> tuple[str, Path]:
    """(storage URL, runs dir) of a study whose one COMPLETE trial peaked at epoch 1 of 3."""
    manifest = make_synthetic(tmp_path / "data", n_volumes=40, frames=4, height=32, width=32,
                              volumes_per_patient=1, seed=3)
    space = space_from_dict({
        "base": {
            "data": {"manifest": str(manifest), "frames": 4, "height": 32, "width": 32,
                     "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.2, "test_fraction": 0.2},
            "model": {"encoder": "tiny"},
            "train": {"epochs": 3, "batch_size": 4, "warmup_epochs": 0,
                      "early_stopping": {"enabled": False}},
            "runtime": {"device": "cpu"},
            "log": {"wandb": True, "wandb_mode": "offline", "wandb_project": "octsearch-test"},
        },
        "params": {"train.lr_head": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "sampler": {"type": "random"},
    })
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study, _ = open_study(space, open_storage(url, heartbeat=False), "final")
    study.enqueue_trial({"train.lr_head": 3e-3})
    trial = study.ask()
    write_overrides(trial, space.suggest(trial))
    for epoch, value in enumerate([0.4, 0.6, 0.5]):
        trial.report(value, epoch)
    write_best_epoch(trial, 1)
    write_run(trial, unfreeze_at_epoch=-1, epochs=3, run_dir=tmp_path / "kept", host="here")
    study.tell(trial, 0.6)
    return url, tmp_path / "runs"


def test_finalize_evaluates_once_on_the_test_split_and_refuses_a_second_look(
    searched: tuple[str, Path], capsys: pytest.CaptureFixture[str],
) -> None:
    url, runs = searched
    args = ["finalize", "--storage", url, "--runs-dir", str(runs)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "study 'final': trial 0 on the test split (" in out
    assert "| class | accuracy | F1 | volumes |" in out
    assert all(f"| {name} |" in out for name in CLASSES)
    assert "Confusion matrix (rows: true class, columns: predicted):" in out
    assert "| | balanced accuracy | 95% interval | volumes per class |" in out
    assert "| search (validation) | 0.6000 | - | - |" in out  # no stored epochs: no interval
    interval = r"\d\.\d{4} \| \[\d\.\d{4}, \d\.\d{4}\] \| \d+/\d+/\d+/\d+ \|"
    assert re.search(r"\| retrained \(validation\) \| " + interval, out)
    assert re.search(r"\| test \| " + interval, out)
    assert re.search(r"  model: \S+/final/best\.pt\n", out)
    study = optuna.load_study(study_name="final", storage=url)
    stored = study.user_attrs[TEST_METRICS_ATTR]
    (final,) = [p for p in (runs).glob("final-*/final")]
    written = json.loads((final / "test_metrics.json").read_text())
    assert written == stored and stored["class_names"] == CLASSES and stored["trial"] == 0
    # W&B: the final run is <study>-final in the study's group, and gets the test result
    first, second = sorted(final.glob("wandb/offline-run-*/run-*.wandb"))  # by time: trained, tested
    trained = read_offline_run(first)
    assert (trained["name"], trained["group"]) == ("final-final", "final")
    assert first.name == second.name  # the same run id: `wandb sync` puts both in one run
    assert read_offline_run(second)["summary"]["test/balanced_accuracy"] == pytest.approx(
        stored["test/balanced_accuracy"])
    volumes = stored["test/volumes"]
    assert volumes >= 4 and sum(map(sum, stored["test/confusion"])) == volumes
    assert 0.0 <= stored["test/balanced_accuracy"] <= 1.0
    assert [u["reused"] for u in study.user_attrs["test/uses"]] == [False]
    assert main(["best", "--storage", url]) == 0  # every view shows the test result
    assert re.search(r"  test split \(finalize of trial 0, retrained on train\): balanced accuracy "
                     r"\d\.\d{4} \[\d\.\d{4}, \d\.\d{4}\] on \d+ volumes \(\d+/\d+/\d+/\d+\), "
                     r"validation 0\.6000 in the search; model \S+/final/best\.pt",
                     capsys.readouterr().out)

    assert main(args) == 2  # the same test split again: refused, nothing trained
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("octsearch: error: the test split of study 'final' "
                                               "was already used by finalize at ")
    assert not (final.parent / "final_2").exists()

    assert main([*args, "--force", "--train-on-val"]) == 0
    out = capsys.readouterr()
    assert "(test split used again: recorded)" in out.out
    assert "retraining trial 0 on train + val for 2 epochs" in out.err
    assert "| retrained (validation) | trained on it | - | - |" in out.out
    uses = optuna.load_study(study_name="final", storage=url).user_attrs["test/uses"]
    assert [(u["reused"], u["train_on_val"]) for u in uses] == [(False, False), (True, True)]
    assert (final.parent / "final_2" / "test_metrics.json").is_file()

    # the kept best.pt of the trial, evaluated without training
    assert main([*args, "--force", "--no-retrain"]) == 2
    assert "--no-retrain needs trial 0's best.pt, but " in capsys.readouterr().err
    (runs.parent / "kept").mkdir()
    for name in ("best.pt", "class_to_idx.json"):
        shutil.copy(final / name, runs.parent / "kept" / name)
    assert main([*args, "--force", "--no-retrain"]) == 0
    out = capsys.readouterr()
    assert "evaluating trial 0's kept " in out.err and "retraining trial" not in out.err
    assert f"  model: {runs.parent / 'kept' / 'best.pt'}" in out.out
    assert "retrained (validation)" not in out.out
    third = json.loads((final.parent / "final_3" / "test_metrics.json").read_text())
    assert third["retrained"] is False
    assert third["test/confusion"] == stored["test/confusion"]  # the same weights, the same split
