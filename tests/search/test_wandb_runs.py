"""W&B under ``octsearch run``: one offline run per trial, named and grouped by the study, with
the trial's params, study and number, its per-class metrics, best values and how it ended (a
tag, and the prune reason); a W&B failure never fails a trial."""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import optuna
from search_testing import FAKE_SPACE, fake_options

from octtrain.tracking.wandb_run import read_offline_run
from search.optuna_compat import study_storage
from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study.join import open_study
from search.trial import with_wandb_identity
from search.worker.loop import run_worker


def run_search(tmp_path: Path, mode: str, enqueue: list[dict[str, Any]]) -> optuna.Study:
    raw = copy.deepcopy(FAKE_SPACE)
    raw["base"]["log"] = {"wandb": True, "wandb_mode": mode, "wandb_project": "octsearch-test"}
    raw["enqueue"] = enqueue
    space = space_from_dict(raw)
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study, _ = open_study(space, storage, "wb")
    options = fake_options(tmp_path, len(enqueue))
    home = tmp_path / "home"  # no ~/.netrc, no W&B settings: online mode has no API key
    env = {"FAKE_FIT_RUN_FILES": "1", "HOME": str(home), "WANDB_DIR": str(tmp_path / "wandb"),
           "WANDB_CONFIG_DIR": str(home / "wandb-config"), "WANDB_API_KEY": ""}
    run_worker(study, space, storage, dataclasses.replace(options, env={**options.env, **env}))
    return study


def offline_run(run_dir: Path, timeout: float = 30.0) -> dict[str, Any]:
    """The trial's offline run, once W&B's service has flushed it (after ``finish`` returns)."""
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        run = read_offline_run(log)
        if "state" in run["summary"] or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def test_each_trial_is_an_offline_wandb_run_grouped_by_study(tmp_path: Path) -> None:
    study = run_search(tmp_path, "offline", [
        {"name": "collapses", "params": {"model.head.hidden": 0, "train.lr_head": 1e-3}},
        {"name": "learns", "params": {"model.head.hidden": 64, "train.lr_head": 2e-3}},
    ])
    pruned, complete = study.trials
    assert (pruned.state.name, complete.state.name) == ("PRUNED", "COMPLETE")
    for trial, state in ((pruned, "pruned"), (complete, "finished")):
        run = offline_run(Path(trial.user_attrs["run_dir"]))
        assert run["name"] == f"wb-trial-{trial.number}" and run["group"] == "wb"
        assert run["config"]["params"] == trial.params
        assert run["config"]["classes"] == ["normal", "drusen", "cnv", "fluid"]
        assert {"val/per_class_accuracy/fluid", "val/per_class_f1/normal",
                "val/balanced_accuracy"} <= set(run["history"])
        assert run["summary"]["state"] == state
        assert (run["config"]["study"], run["config"]["trial"]) == ("wb", trial.number)
        assert run["config"]["study_id"] == study_storage(study).get_study_id_from_name("wb")
        assert run["tags"] == [trial.user_attrs["enqueued"], state]
    assert offline_run(Path(pruned.user_attrs["run_dir"]))["summary"]["prune_reason"] == \
        pruned.user_attrs["prune_reason"]
    assert run["summary"]["val/balanced_accuracy"] == {"max": 0.9, "last": 0.9}
    assert run["history"]["val/per_class_accuracy/cnv"] == 0.9  # the learning trial's last epoch
    assert "log.wandb_name" not in complete.user_attrs["overrides"]  # exports stay clean


def test_a_wandb_failure_never_fails_the_trial(tmp_path: Path) -> None:
    study = run_search(tmp_path, "online", [  # online without an API key: W&B refuses to start
        {"name": "learns", "params": {"model.head.hidden": 64, "train.lr_head": 2e-3}},
    ])
    (trial,) = study.trials
    assert trial.state.name == "COMPLETE" and trial.value == 0.9
    log = (Path(trial.user_attrs["run_dir"]) / "trial.log").read_text()
    assert "octtrain: warning: W&B: cannot start the run, going on without it: UsageError" in log


def test_the_final_run_is_named_after_the_study_in_its_group() -> None:
    raw = copy.deepcopy(FAKE_SPACE)
    raw["base"]["log"] = {"wandb": True}
    cfg = space_from_dict(raw).trainer_config({})
    log = with_wandb_identity(cfg, "s", None, ["train.lr_head"]).log
    assert (log.wandb_name, log.wandb_group, log.wandb_config, log.wandb_tags) == ("s-final", "s", {"study": "s"}, [])
    assert with_wandb_identity(space_from_dict(FAKE_SPACE).trainer_config({}), "s", 1, []).log.wandb_name is None
