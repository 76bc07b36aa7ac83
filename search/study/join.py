"""Create a study for a space, or join one: a study holds one space for its whole life.

The canonical space (:meth:`SearchSpace.to_dict`: base config, distributions, objective,
enqueued trials, sampler, pruner) is stored with the study (:func:`search.contract.write_space`)
when the study is created; it is also what trial processes and ``export-best`` read, so a
study never depends on the space file still being around. A worker joining with a space that
differs is refused with the list of differences.
"""

from __future__ import annotations

import time
from typing import Any

import optuna

from search.contract import ENQUEUED_ATTR, stored_space_dict, write_space
from search.errors import SearchSpaceError, StorageError
from search.interrupts import shielded
from search.optuna_compat import no_experimental_warning
from search.space import SearchSpace, diff_spaces, space_from_dict, trainer_defaults
from search.storage import StudyStorage, redact


def open_study(
    space: SearchSpace, storage: StudyStorage, study_name: str, *, seed: int | None = None
) -> tuple[optuna.Study, bool]:
    """The study ``study_name`` for ``space``, and whether this call created it.

    Many workers may start at the same instant. The creator is the one whose ``create_study``
    succeeds; it enqueues the space's trials and stores the space *last*, so a joiner that sees
    the space also sees the enqueued trials, and the seed trials are enqueued exactly once. A
    joiner that arrives in between waits up to :data:`SPACE_WAIT_S` for the space to appear.
    """
    sampler = space.sampler.build(seed)
    pruner = space.pruner.build()
    canonical = space.to_dict()
    try:
        with shielded():  # a stop signal waits until a new study is whole (its space stored last)
            return _create(space, storage, study_name, sampler, pruner, canonical), True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler,
                                  pruner=pruner)
        _wait_for_space(study)
        _check_same_space(study, canonical, storage)
        return study, False


def _create(space: SearchSpace, storage: StudyStorage, study_name: str,
            sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner,
            canonical: dict[str, Any]) -> optuna.Study:
    """A new study: created (DuplicatedStudyError when another worker was first), its trials
    enqueued, its space stored last."""
    study = optuna.create_study(
        storage=storage, sampler=sampler, pruner=pruner, study_name=study_name,
        direction=optuna.study.StudyDirection.MAXIMIZE if space.objective.maximize
        else optuna.study.StudyDirection.MINIMIZE,
    )
    with no_experimental_warning():
        study.set_metric_names([space.objective.metric])  # the dashboard's name for the value
    for entry in space.enqueue:
        study.enqueue_trial(entry.params, user_attrs={ENQUEUED_ATTR: entry.name})
    write_space(study, canonical, space.source)  # last: publishes the study to joiners
    return study


SPACE_WAIT_S = 30.0  # how long a joiner waits for a just-created study to store its space


def _wait_for_space(study: optuna.Study) -> None:
    """Wait while the study's creator is still setting it up (it stores the space last)."""
    deadline = time.monotonic() + SPACE_WAIT_S
    while stored_space_dict(study) is None and time.monotonic() < deadline:
        time.sleep(0.2)


def _check_same_space(study: optuna.Study, canonical: dict[str, Any], storage: StudyStorage) -> None:
    stored = stored_space_dict(study)
    where = f"study {study.study_name!r} in {redact(storage.url)!r}"
    if stored is None:
        raise SearchSpaceError([("", f"{where} was not created by octsearch (it stores no "
                                 "search space): choose another --study name")])
    differences = diff_spaces(stored, canonical, defaults={"base": trainer_defaults()})
    if differences:
        shown = "; ".join(differences[:8])
        more = f"; and {len(differences) - 8} more" if len(differences) > 8 else ""
        raise SearchSpaceError([("", f"refusing to join {where}: its search space differs from "
                                 f"this one: {shown}{more}. Use the original space file, or a "
                                 "new --study name for the new space")])


def load_review_study(storage: StudyStorage, study_name: str | None) -> optuna.Study:
    """An existing study for reading; without a name, the storage's only study."""
    names = optuna.study.get_all_study_names(storage)
    if study_name is None:
        if len(names) != 1:
            listed = ", ".join(repr(n) for n in names) or "none"
            raise StorageError(f"{redact(storage.url)!r} holds {len(names)} studies ({listed}): "
                               "name one with --study or --space")
        study_name = names[0]
    elif study_name not in names:
        listed = ", ".join(repr(n) for n in names) or "none"
        raise StorageError(f"no study {study_name!r} in {redact(storage.url)!r} "
                           f"(studies: {listed})")
    return optuna.load_study(study_name=study_name, storage=storage)


def stored_space(study: optuna.Study) -> SearchSpace:
    """The space a study was created with."""
    raw = stored_space_dict(study)
    if raw is None:
        raise StorageError(f"study {study.study_name!r} was not created by octsearch "
                           "(it stores no search space)")
    return space_from_dict(raw, source=f"study {study.study_name!r}")
