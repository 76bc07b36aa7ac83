"""search.optuna_compat: every private Optuna name octsearch uses is still where it was, and the
wrappers do what the code relies on, through Optuna's public loop."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search import optuna_compat as compat


def test_every_private_name_is_in_the_installed_optuna() -> None:
    assert compat.missing() == [], f"optuna {optuna.__version__} moved: {compat.missing()}"


def test_a_moved_name_is_reported_by_its_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "PRIVATE_NAMES", (*compat.PRIVATE_NAMES, ("optuna.storages", "_Gone"),
                                                  ("optuna.nonexistent", "X"), ("optuna.trial", "Trial._nope")))
    assert compat.missing() == ["optuna.storages._Gone", "optuna.nonexistent (module)", "optuna.trial.Trial._nope"]


def test_storage_id_take_over_and_put_back(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db")
    trial = study.ask()
    trial.report(0.5, 0)
    assert compat.study_storage(study).get_trial(compat.trial_id(trial)).number == trial.number
    assert compat.frozen(study, trial).intermediate_values == {0: 0.5}
    latest = compat.latest_trial(trial)
    assert latest is not None and latest.intermediate_values == {0: 0.5}
    other = compat.take_over(study, compat.trial_id(trial))  # as a trial process does
    other.report(0.7, 1)
    assert compat.frozen(study, trial).intermediate_values == {0: 0.5, 1: 0.7}
    compat.put_back(study, trial)
    assert study.trials[0].state is TrialState.WAITING
    assert study.ask().number == trial.number  # the next ask takes it


def test_no_experimental_warning_silences_only_that_warning() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with compat.no_experimental_warning():
            warnings.warn("x", optuna.exceptions.ExperimentalWarning, stacklevel=1)
            warnings.warn("y", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["y"]


def test_private_names_lists_every_private_name_the_module_uses() -> None:
    """Each ``._name`` the compatibility module reaches (attributes, modules, imported names)
    is in PRIVATE_NAMES, so that missing() checks it."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(compat))
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            used.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("optuna"):
            used.update(part for part in node.module.split(".") if part.startswith("_"))
            used.update(a.name for a in node.names if a.name.startswith("_"))
        elif isinstance(node, ast.FunctionDef):
            for const in ast.walk(node):  # getattr(obj, "_name", ...)
                if isinstance(const, ast.Constant) and isinstance(const.value, str) \
                        and const.value.startswith("_") and not const.value.startswith("__") \
                        and const.value.isidentifier():
                    used.add(const.value)
    listed = {part for module, path in compat.PRIVATE_NAMES for part in (*module.split("."), *path.split("."))}
    assert used - listed == set(), f"private Optuna names used but not in PRIVATE_NAMES: {used - listed}"
