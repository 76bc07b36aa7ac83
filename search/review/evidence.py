"""What a worker leaves for review when a trial ends, none of which can fail the trial.

:class:`ReviewEvidence` is a worker's trial-end callback (:class:`search.worker.TrialEndCallback`,
wired by ``octsearch run``): before ``tell``, the run files go to the artifact store (a finished
trial's attributes are frozen); after it, the trial's note and the study's figures and note are written.
Any error (a full disk, a storage hiccup, a missing optional package) is one line on the
worker's output, and the trial keeps the state it was told.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import optuna

from octtrain.errors import clip
from search.contract import stored_run_dir
from search.notices import notice
from search.optuna_compat import trial_id
from search.review.artifacts import artifact_store, upload_run_files
from search.review.notes import refresh_study_figures, save_study_note, save_trial_note
from search.study import stored_space


@contextlib.contextmanager
def _never_fails(what: str, trial: optuna.Trial, out: TextIO | None) -> Iterator[None]:
    try:
        yield
    except Exception as err:  # noqa: BLE001 - review evidence must never fail a trial
        notice(out, f"warning: trial {trial.number}: cannot write {what}: "
                    f"{clip(f'{type(err).__name__}: {err}')}")


def before_tell(trial: optuna.Trial, artifacts_dir: Path, out: TextIO | None = None) -> None:
    """Upload the trial's ``metrics.jsonl`` and ``config.yaml`` as artifacts."""
    with _never_fails("its artifacts", trial, out):
        run_dir = stored_run_dir(trial.storage.get_trial(trial_id(trial)))
        if run_dir:
            upload_run_files(artifact_store(artifacts_dir), trial, Path(run_dir))


def after_tell(study: optuna.Study, trial: optuna.Trial, out: TextIO | None = None) -> None:
    """Write the trial's note and refresh the study's figures and note."""
    with _never_fails("its dashboard note", trial, out):
        save_trial_note(study, trial, stored_space(study).objective.metric)
    with _never_fails("the study figures", trial, out):
        refresh_study_figures(study)
    with _never_fails("the study note", trial, out):
        save_study_note(study)


class ReviewEvidence:
    """The worker's trial-end callback for review: artifacts before ``tell``, note and figures after."""

    def __init__(self, artifacts_dir: Path) -> None:
        self.artifacts_dir = artifacts_dir

    def before_tell(self, study: optuna.Study, trial: optuna.Trial, out: TextIO | None) -> None:
        before_tell(trial, self.artifacts_dir, out)

    def after_tell(self, study: optuna.Study, trial: optuna.Trial, out: TextIO | None) -> None:
        after_tell(study, trial, out)
