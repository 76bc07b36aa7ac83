"""Creating and joining a study, including many workers starting at the same instant."""

from __future__ import annotations

import threading
from typing import Any

import optuna
import pytest
from search_testing import run_threads

from search.contract import ENQUEUED_ATTR, SPACE_ATTR
from search.errors import SearchSpaceError
from search.space.search_space import space_from_dict
from search.storage.sql import open_storage
from search.study import join as study_module
from search.study.join import open_study

ENQUEUE = [{"name": "first", "params": {"model.head.hidden": 64, "train.lr_head": 1e-3}},
           {"name": "second", "params": {"model.head.hidden": 0, "train.lr_head": 2e-3}}]


def test_simultaneous_workers_enqueue_the_seed_trials_once(fake_space: dict[str, Any], storage_url: str,
                                                           study_name: str) -> None:
    fake_space["enqueue"] = ENQUEUE
    space = space_from_dict(fake_space)
    start = threading.Barrier(4)
    created: list[bool] = []

    def worker() -> None:
        start.wait(timeout=60)
        # a fresh database too: every worker also creates Optuna's tables at once
        created.append(open_study(space, open_storage(storage_url, heartbeat=False), study_name)[1])

    errors = run_threads(worker, 4, timeout=120)
    assert not errors, errors
    assert sorted(created) == [False, False, False, True]
    study = optuna.load_study(study_name=study_name, storage=open_storage(storage_url, heartbeat=False))
    assert [t.user_attrs[ENQUEUED_ATTR] for t in study.get_trials()] == ["first", "second"]


def test_a_joiner_waits_for_the_creator_to_store_the_space(fake_space: dict[str, Any], sqlite_url: str) -> None:
    space = space_from_dict(fake_space)
    storage = open_storage(sqlite_url, heartbeat=False)
    half_made = optuna.create_study(storage=storage, study_name="s", direction="maximize")
    timer = threading.Timer(0.5, half_made.set_user_attr, args=(SPACE_ATTR, space.to_dict()))
    timer.start()
    study, created = open_study(space, storage, "s")
    timer.join()
    assert not created and study.user_attrs[SPACE_ATTR] == space.to_dict()


def test_a_study_not_made_by_octsearch_is_refused(fake_space: dict[str, Any], sqlite_url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(study_module, "SPACE_WAIT_S", 0.3)
    storage = open_storage(sqlite_url, heartbeat=False)
    optuna.create_study(storage=storage, study_name="foreign")
    with pytest.raises(SearchSpaceError, match="was not created by octsearch"):
        open_study(space_from_dict(fake_space), storage, "foreign")
