"""Trials stopped by a signal: recorded, re-queued with their parameters, resumed by any worker.

When a worker gets SIGTERM (a spot VM's notice) or Ctrl-C, it sends SIGTERM to its trial
process, which stops at its next optimizer step and writes a resume checkpoint
(:mod:`octtrain.runtime.preempt`) to :func:`checkpoint_path`. The same happens when a scheduler
sends SIGTERM or SIGINT to the trial process itself. The worker then (:func:`requeue`):

1. records on the trial how it stopped (``preempted``) and tells it FAIL, so it does not count
   towards ``--trials``;
2. queues its continuation (:func:`search.storage.queue_continuation`): a WAITING trial with the
   same parameters that resumes from the checkpoint with the epochs done, or, when the process
   wrote none (stopped before training began, or killed after its grace), starts again. The next
   ``ask`` of any worker takes it before any other WAITING trial, whatever its number
   (:func:`search.worker.loop.ask_trial`), and its trial process continues the run
   (``fit(resume_from=...)``): every epoch is reported exactly once across the two trials'
   records, and the resumed trial holds all of them.

A trial the host failed (:func:`requeue_host_failure`: a full disk, a folder that vanished) is
re-queued to start again too, but counts as a failure: a worker on a broken host stops after
``--max-failures`` of them, and the configuration waits for another.

The checkpoint lives under ``--checkpoint-dir`` (default: ``--runs-dir``), so the host that
resumes must see the same path: a shared mount for several hosts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

import optuna
from optuna.trial import TrialState

from octtrain.errors import HostError
from octtrain.train import RESUME_FILE
from search.contract import (
    preempted_checkpoint,
    resume_source,
    stored_run_dir,
    trial_dir,
    write_failure,
    write_preempted,
)
from search.notices import notice
from search.optuna_compat import frozen as frozen_trial
from search.optuna_compat import study_storage
from search.storage import queue_continuation
from search.trial import HOST_PROBLEM, RESULT_FILE, Outcome, TrialResult


def checkpoint_path(checkpoint_dir: Path, study: optuna.Study, trial_number: int) -> Path:
    """Where trial ``trial_number`` writes its resume checkpoint when preempted (absolute)."""
    return trial_dir(checkpoint_dir, study, trial_number) / RESUME_FILE


def interrupted_result(study: optuna.Study, trial_id: int) -> TrialResult | None:
    """The result a trial process wrote before its interrupted worker stopped it (preempted,
    or finished just then); None when it wrote none."""
    run_dir = stored_run_dir(study_storage(study).get_trial(trial_id))
    return TrialResult.read(Path(run_dir) / RESULT_FILE) if run_dir else None


def stopped_result(study: optuna.Study, trial_id: int, err: BaseException) -> TrialResult:
    """How a trial ends whose worker stopped it (``err``): interrupted (Ctrl-C, or SIGTERM named
    by the CLI), the trial process may have ended on its own terms, preempted with a resume
    checkpoint or just finished (its result file says so); one that wrote no result is re-queued
    to start again (:mod:`search.worker.requeue`). A worker that failed fails the trial."""
    if isinstance(err, HostError):  # e.g. its run directory could not be made
        return TrialResult(Outcome.HOST_FAILED, reason=f"{HOST_PROBLEM}{err}")
    if not isinstance(err, KeyboardInterrupt):
        return TrialResult(Outcome.FAILED, reason=f"worker: {type(err).__name__}: {err}")
    how = f"interrupted by {err}" if str(err) else "interrupted"
    ended = interrupted_result(study, trial_id)
    if ended is not None:
        return ended
    return TrialResult(Outcome.PREEMPTED, reason=f"worker: {how} before its trial process wrote "
                       "a resume checkpoint")


def requeue(study: optuna.Study, trial: optuna.Trial, result: TrialResult) -> None:
    """Record a trial stopped by a signal, tell it FAIL, and queue its continuation (WAITING):
    from its resume checkpoint, or from the start when it wrote none."""
    assert result.state is Outcome.PREEMPTED
    done = result.epochs_done or 0
    frozen = frozen_trial(study, trial)
    write_preempted(trial, {"reason": result.reason, "epochs_done": done,
                            "checkpoint": result.checkpoint})
    again = "resume from its checkpoint" if result.checkpoint else "start again"
    write_failure(trial, f"{result.reason}; re-queued to {again}")
    study.tell(trial, state=TrialState.FAIL)  # first: a crash after it loses a resume, not a count
    queue_continuation(study, frozen, result.checkpoint, done)


def requeue_host_failure(study: optuna.Study, trial: optuna.Trial, result: TrialResult) -> None:
    """A trial the host failed (a full disk, a folder gone: not its configuration's fault): told
    FAIL with the reason, which counts towards the worker's failures in a row, and its
    configuration queued to start again, for this worker or another host."""
    assert result.state is Outcome.HOST_FAILED
    frozen = frozen_trial(study, trial)
    write_failure(trial, f"{result.reason}; its configuration is re-queued", result.output_tail)
    study.tell(trial, state=TrialState.FAIL)
    queue_continuation(study, frozen, None, 0)


def drop_orphaned_checkpoints(study: optuna.Study, checkpoint_dir: Path, *,
                              out: TextIO | None = None) -> int:
    """Remove the resume checkpoints under ``checkpoint_dir`` that nothing will resume from: the
    trial that wrote one has ended, its preempted record does not name it (the trial process was
    killed before the record reached the database, so its configuration was re-queued to start
    again), and no unfinished trial resumes from it. A trial whose worker re-queues it writes
    the record before it tells FAIL, so a continuation still being queued keeps its checkpoint.
    Returns how many were removed."""
    trials = study.get_trials(deepcopy=False)
    resumed = {resume_source(t) for t in trials if not t.state.is_finished()}
    dropped = 0
    for trial in trials:
        path = checkpoint_path(checkpoint_dir, study, trial.number)
        recorded = preempted_checkpoint(trial)
        if (not trial.state.is_finished() or str(path) in resumed
                or (recorded is not None and recorded[0] == str(path)) or not path.is_file()):
            continue
        path.unlink(missing_ok=True)
        dropped += 1
        notice(out, f"trial {trial.number} is {trial.state.name} and nothing resumes from its "
                    f"checkpoint (its record never reached the database): removed {path}")
    return dropped
