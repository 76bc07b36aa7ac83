"""A trial's continuation: the WAITING trial that takes over a trial stopped by a signal.

A trial stopped by SIGTERM or Ctrl-C (its worker's, a scheduler's, or one sent to the trial
process itself) ends FAIL, which does not count towards ``--trials``, and its configuration is
queued again as a new WAITING trial with the same parameters and distributions:

- with the resume checkpoint the trial process wrote (``resume_from``), also the epoch records
  (:func:`search.contract.attrs_for_retry`) and intermediate values of the epochs it had done,
  so that every epoch is stored exactly once and the continuation goes on from where it stopped;
- without one (the process was stopped before it could write one, or killed after its grace),
  none of them: the configuration starts again from epoch 0.

Either way it carries ``resumes_trial`` (the stopped trial's number), so every worker asks it
before any other WAITING trial (:func:`search.contract.runs_first`). Two paths queue one: the
worker that stopped the trial (:mod:`search.worker.requeue`), and, when that worker died before
it could, the stale-trial sweep, from the ``preempted`` record the trial process stored, or, for a
continuation whose worker died before it stopped again, from the checkpoint it was resuming
(:func:`resumable_checkpoint`, :func:`search.storage.sql.fail_stale`).
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.contract import (
    RESUME_FROM_ATTR,
    RESUMES_TRIAL_ATTR,
    attrs_for_retry,
    preempted_checkpoint,
    resume_source,
)
from search.optuna_compat import no_experimental_warning, study_storage


def queue_continuation(study: optuna.Study, stopped: FrozenTrial, checkpoint: str | None,
                       epochs_done: int) -> None:
    """Add the WAITING trial that continues ``stopped`` from ``checkpoint`` (after its
    ``epochs_done`` epochs), or starts its configuration again when ``checkpoint`` is None."""
    done = epochs_done if checkpoint is not None else 0
    user_attrs, system_attrs = attrs_for_retry(stopped, done)
    user_attrs[RESUMES_TRIAL_ATTR] = stopped.number
    if checkpoint is not None:
        user_attrs[RESUME_FROM_ATTR] = checkpoint
    with no_experimental_warning():
        study.add_trial(optuna.create_trial(
            state=TrialState.WAITING, params=stopped.params, distributions=stopped.distributions,
            user_attrs=user_attrs, system_attrs=system_attrs,
            intermediate_values={s: v for s, v in stopped.intermediate_values.items() if s < done},
        ))


def retire_checkpoint(trial: FrozenTrial | optuna.Trial, kept: str | None) -> None:
    """A continuation ended (told by its worker, or failed as stale): the checkpoint it resumed
    from goes, unless it is ``kept`` (the trial stopped again before writing a newer one, and
    is re-queued from this one). Nothing else resumes from it: this is the one place it goes."""
    source = resume_source(trial)
    if source is not None and source != kept:
        Path(source).unlink(missing_ok=True)


def resumable_checkpoint(study: optuna.Study, trial: FrozenTrial) -> tuple[str, int] | None:
    """The checkpoint a stale ``trial`` can still be resumed from, with the epochs done before
    it, if this host sees the file: the one its trial process stored as it stopped, else, for a
    continuation that had not stopped again, the one it was resuming (its epochs done are in the
    stopped trial's record). None: the trial starts again from epoch 0."""
    found = preempted_checkpoint(trial)
    source = resume_source(trial)
    if found is None and source is not None:
        stopped = trial.user_attrs.get(RESUMES_TRIAL_ATTR)
        storage = study_storage(study)
        if isinstance(stopped, int):
            first = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(study.study_name), stopped))
            record = preempted_checkpoint(first)
            found = record if record is not None and record[0] == source else None
    return found if found is not None and Path(found[0]).is_file() else None
