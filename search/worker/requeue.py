"""Preempted trials: recorded, re-queued with their parameters, and resumed by any worker.

When a worker gets SIGTERM (a spot VM's notice) or Ctrl-C, it sends SIGTERM to its trial
process, which stops at its next optimizer step and writes a resume checkpoint
(:mod:`octtrain.runtime.preempt`) to :func:`checkpoint_path`. The worker then (:func:`requeue`):

1. records on the trial how it stopped (``preempted``) and tells it FAIL, so it does not count
   towards ``--trials``;
2. adds a WAITING trial with the same parameters, the intermediate values and ``epoch_NNN``
   attributes of the epochs done, and ``resume_from`` = the checkpoint. The next ``ask`` of any
   worker takes it before any other WAITING trial, whatever its number
   (:func:`search.worker.loop.ask_trial`), and its trial process continues the run
   (``fit(resume_from=...)``): every epoch is reported exactly once across the two trials'
   records, and the resumed trial holds all of them.

The checkpoint lives under ``--checkpoint-dir`` (default: ``--runs-dir``), so the host that
resumes must see the same path: a shared mount for several hosts.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import TrialState

from octtrain.train import RESUME_FILE
from search.contract import (
    KEPT_ON_RETRY,
    RESUME_FROM_ATTR,
    RESUMES_TRIAL_ATTR,
    epoch_attr,
    stored_run_dir,
    trial_dir,
    write_failure,
    write_preempted,
)
from search.optuna_compat import frozen as frozen_trial
from search.optuna_compat import no_experimental_warning, study_storage
from search.trial import RESULT_FILE, Outcome, TrialResult


def checkpoint_path(checkpoint_dir: Path, study: optuna.Study, trial_number: int) -> Path:
    """Where trial ``trial_number`` writes its resume checkpoint when preempted (absolute)."""
    return trial_dir(checkpoint_dir, study, trial_number) / RESUME_FILE


def interrupted_result(study: optuna.Study, trial_id: int) -> TrialResult | None:
    """The result a trial process wrote before its interrupted worker stopped it (preempted,
    or finished just then); None when it wrote none."""
    run_dir = stored_run_dir(study_storage(study).get_trial(trial_id))
    return TrialResult.read(Path(run_dir) / RESULT_FILE) if run_dir else None


def requeue(study: optuna.Study, trial: optuna.Trial, result: TrialResult) -> None:
    """Record a preempted trial, tell it FAIL, and queue its continuation (WAITING)."""
    assert result.state is Outcome.PREEMPTED and result.checkpoint is not None
    done = result.epochs_done or 0
    frozen = frozen_trial(study, trial)
    carried = {k: v for k, v in frozen.user_attrs.items()
               if k in KEPT_ON_RETRY or k in {epoch_attr(e) for e in range(done)}}
    write_preempted(trial, {"reason": result.reason, "epochs_done": done,
                            "checkpoint": result.checkpoint})
    write_failure(trial, f"{result.reason}; re-queued to resume")
    study.tell(trial, state=TrialState.FAIL)  # first: a crash after it loses a resume, not a count
    with no_experimental_warning():
        study.add_trial(optuna.create_trial(
            state=TrialState.WAITING, params=frozen.params, distributions=frozen.distributions,
            user_attrs={**carried, RESUME_FROM_ATTR: result.checkpoint,
                        RESUMES_TRIAL_ATTR: frozen.number},
            system_attrs=frozen.system_attrs,
            intermediate_values={s: v for s, v in frozen.intermediate_values.items() if s < done},
        ))
