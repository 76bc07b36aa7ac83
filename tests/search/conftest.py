"""Shared fixtures of the search tests: storages and unique study names.

Server storages come from ``OCTSEARCH_TEST_POSTGRES`` / ``OCTSEARCH_TEST_MYSQL``. A test that
needs an unreachable server is skipped on a laptop and fails under ``CI=true``, so CI never
passes by skipping. Every test gets a unique study name, deleted after the test.
"""

from __future__ import annotations

import copy
import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from fake_fit import RAISE, SLOW
from search_testing import FAKE_SPACE, drop_study, fake_options, reachable_server

from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study.join import open_study
from search.worker.loop import run_worker


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres),
                        pytest.param("mysql", marks=pytest.mark.mysql)])
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage kind in turn: a fresh SQLite file, then the PostgreSQL and MySQL servers."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'study.db'}"
    return reachable_server(request.param)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'study.db'}"


@pytest.fixture
def study_name(storage_url: str) -> Iterator[str]:
    """A unique study name, and the study deleted from ``storage_url`` afterwards."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    drop_study(storage_url, name)


@pytest.fixture
def fake_space() -> dict[str, Any]:
    return copy.deepcopy(FAKE_SPACE)


@pytest.fixture(scope="session")
def reviewed_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """(storage URL, study name) of a finished fake study: PRUNED, FAIL and COMPLETE trials.

    Trial 0 collapses (pruned at epoch 2), trial 1 raises, trial 2 learns (0.9 at epoch 4).
    Shared read-only by the review, CLI and dashboard tests.
    """
    root = tmp_path_factory.mktemp("reviewed")
    return _three_trial_study(root, "reviewed", {}), "reviewed"


@pytest.fixture(scope="session")
def evidence_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """(storage URL, study name, runs dir) of the ``reviewed_study`` trials run with the fake
    trainer's run files (config.yaml, class_to_idx.json, metrics.jsonl): the worker's notes,
    figures and artifacts of a finished study. Shared read-only."""
    root = tmp_path_factory.mktemp("evidence")
    url = _three_trial_study(root, "evidence", {"FAKE_FIT_RUN_FILES": "1"})
    return url, "evidence", root / "runs"


@pytest.fixture(scope="module")
def evidence(evidence_study: tuple[str, str, Path]) -> optuna.Study:
    """The ``evidence_study``, loaded (read-only)."""
    url, name, _ = evidence_study
    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))


def _three_trial_study(root: Path, name: str, env: dict[str, str]) -> str:
    """The URL of a SQLite study in ``root`` whose fake trials collapse (pruned at epoch 2),
    raise, and learn (0.9 at epoch 4); ``env``: extra environment of the trial processes."""
    url = f"sqlite:///{root / 'study.db'}"
    raw = copy.deepcopy(FAKE_SPACE)
    raw["enqueue"] = [
        {"name": "collapses", "params": {"model.head.hidden": 0, "train.lr_head": 1e-3}},
        {"name": "raises", "params": {"model.head.hidden": 64, "train.lr_head": RAISE}},
        {"name": "learns", "params": {"model.head.hidden": 64, "train.lr_head": 1e-3}},
    ]
    space = space_from_dict(raw)
    storage = open_storage(url)
    study, _ = open_study(space, storage, name)
    options = fake_options(root, 2)
    options = dataclasses.replace(options, env={**options.env, **env})
    run_worker(study, space, storage, options)
    assert [t.state.name for t in study.get_trials()] == ["PRUNED", "FAIL", "COMPLETE"]
    return url


# The knob study: train.class_weights none collapses (the fake trainer's rule), auto learns; the
# slow learner is pruned by the reach rule while it still improves (a late-bloomer suspect).
KNOB_TRIALS = [
    ("learns", {"train.class_weights": "auto", "model.head.hidden": 64, "train.lr_head": 1e-3}),
    ("raises", {"train.class_weights": "auto", "model.head.hidden": 128, "train.lr_head": RAISE}),
    ("none_a", {"train.class_weights": "none", "model.head.hidden": 64, "train.lr_head": 2e-3}),
    ("none_b", {"train.class_weights": "none", "model.head.hidden": 128, "train.lr_head": 1e-3}),
    ("slow", {"train.class_weights": "auto", "model.head.hidden": 64, "train.lr_head": SLOW}),
]


def knob_space() -> dict[str, Any]:
    """The fake space with ``train.class_weights`` searched, ``hidden`` never 0, and the reach rule
    as the inner pruner; :data:`KNOB_TRIALS` enqueued."""
    raw = copy.deepcopy(FAKE_SPACE)
    raw["params"] = {
        "train.class_weights": {"type": "categorical", "choices": ["auto", "none"]},
        "model.head.hidden": {"type": "categorical", "choices": [64, 128]},
        "train.lr_head": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    }
    # the reach rule waits for epoch 3, so the collapse rule is what stops a collapsed trial (at 2)
    raw["pruner"] = {"collapse": {"patience": 2, "grace_epochs": 1}, "inner": {"type": "reach", "grace_epochs": 3}}
    raw["enqueue"] = [{"name": name, "params": params} for name, params in KNOB_TRIALS]
    return raw


@pytest.fixture(scope="session")
def knob_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, Path]:
    """(storage URL, study name, folder) of a finished fake study of :data:`KNOB_TRIALS`: a
    COMPLETE, a FAIL, two collapsed (stuck at epoch 2), and a slow learner pruned by the reach rule
    at epoch 3. Shared read-only (copy the database to change it)."""
    root = tmp_path_factory.mktemp("knob")
    url = f"sqlite:///{root / 'study.db'}"
    space = space_from_dict(knob_space())
    storage = open_storage(url)
    study, _ = open_study(space, storage, "knob")
    run_worker(study, space, storage, fake_options(root, len(KNOB_TRIALS) - 1))
    assert [t.state.name for t in study.get_trials()] == [
        "COMPLETE", "FAIL", "PRUNED", "PRUNED", "PRUNED"]
    return url, "knob", root
