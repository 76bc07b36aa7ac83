"""What a worker leaves for review of a trial: its W&B identity, and what it writes when the
trial ends, none of which can fail the trial.

Two calls around ``tell`` (:func:`search.worker.loop.run_one_trial`): before it, the run files go
to the artifact store (a finished trial's attributes are frozen); after it, the trial's note
and the study's figures are written. Any error (a full disk, a storage hiccup, a missing
optional package) is one line on the worker's output, and the trial keeps the state it was told.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO

import optuna

from octtrain.config import TrainConfig
from octtrain.errors import clip
from search.contract import stored_run_dir
from search.optuna_compat import trial_id
from search.review.artifacts import artifact_store, upload_run_files
from search.review.notes import refresh_study_figures, save_trial_note
from search.study import stored_space


@contextlib.contextmanager
def _never_fails(what: str, trial: optuna.Trial, out: TextIO | None) -> Iterator[None]:
    try:
        yield
    except Exception as err:  # noqa: BLE001 - review evidence must never fail a trial
        if out is not None:
            out.write(f"octsearch: warning: trial {trial.number}: cannot write {what}: "
                      f"{clip(f'{type(err).__name__}: {err}')}\n")
            out.flush()


def with_wandb_identity(cfg: TrainConfig, study_name: str, trial_number: int,
                        params: Iterable[str]) -> TrainConfig:
    """With ``log.wandb`` on: the trial's W&B run is ``<study>-trial-<n>`` in group ``<study>``,
    its sampled params in its config. Not stored with the trial: an exported config stays clean."""
    if not cfg.log.wandb:
        return cfg
    return cfg.with_overrides({"log.wandb_name": f"{study_name}-trial-{trial_number}",
                               "log.wandb_group": study_name, "log.wandb_params": list(params)},
                              source="octsearch W&B identity")


def before_tell(trial: optuna.Trial, artifacts_dir: Path, out: TextIO | None = None) -> None:
    """Upload the trial's ``metrics.jsonl`` and ``config.yaml`` as artifacts."""
    with _never_fails("its artifacts", trial, out):
        run_dir = stored_run_dir(trial.storage.get_trial(trial_id(trial)))
        if run_dir:
            upload_run_files(artifact_store(artifacts_dir), trial, Path(run_dir))


def after_tell(study: optuna.Study, trial: optuna.Trial, out: TextIO | None = None) -> None:
    """Write the trial's note and refresh the study's figures."""
    with _never_fails("its dashboard note", trial, out):
        save_trial_note(study, trial, stored_space(study).objective.metric)
    with _never_fails("the study figures", trial, out):
        refresh_study_figures(study)
