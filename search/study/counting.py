"""The counting rule: how workers that share a study end it with exactly N finished trials.

``--trials N`` counts *finished* (COMPLETE + PRUNED) trials of the whole study, across all
workers and runs. Before each trial a worker fails stale trials (heartbeat), then counts
finished and RUNNING trials (:func:`next_step`):

- ``finished >= N``: stop;
- ``finished + running >= N``: the remaining trials are running elsewhere: wait, polling,
  and take over if one of them fails or goes stale;
- otherwise ask a trial.

Workers that count at the same instant all see room for one more trial, and all ask. So after
``ask`` a worker counts again, its new trial (RUNNING) included, and keeps the trial only if
``finished + running <= N`` (:func:`keep_or_put_back`); otherwise it puts the trial back in the
queue (WAITING) before any parameter is suggested for it, and waits a random part of its poll
interval before it counts again.

Why no study ends with more than N: each asked trial is stored before its worker counts again.
Of any trials kept at the same time, take the one whose second count came last: that count saw
all the others (each was stored before its own worker's second count, so before this one) and
every finished trial, and it kept its trial only if they came to at most N. Two workers that
ask at the same instant may each see the other's trial and both put theirs back: under the
count, never over; the random wait lets the next one to count take the place.

A trial put back keeps its place in the queue: an enqueued or resumed trial (WAITING before
``ask`` took it) keeps its parameters and attributes, and a sampled one had none suggested
yet, so whichever worker takes it next samples it afresh. ``ask`` takes WAITING trials first,
so a trial put back is the next one started; one may stay WAITING in a study that is done, and
a later ``octsearch run --trials M`` with M > N starts it first.

FAIL trials do not count: a failed trial is replaced (see :mod:`search.worker.loop` for when a
worker gives up).
"""

from __future__ import annotations

from enum import Enum

import optuna
from optuna.trial import TrialState

from search.optuna_compat import put_back

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def count_trials(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials of the study, all workers together."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


class Step(Enum):
    """What a worker does next (:func:`next_step`)."""

    START = "start"  # a trial
    WAIT = "wait"  # for the trials running elsewhere
    STOP = "stop"  # the study has its finished trials


def next_step(finished: int, running: int, n_trials: int) -> Step:
    """The counting rule before ``ask`` (module docstring)."""
    if finished >= n_trials:
        return Step.STOP
    if finished + running >= n_trials:
        return Step.WAIT
    return Step.START


def keep_or_put_back(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> tuple[int, int] | None:
    """The counting rule after ``ask``: None to keep ``trial`` (just asked, nothing suggested
    yet), or the (finished, running) count, this trial included, that made the worker put it
    back in the queue (WAITING)."""
    finished, running = count_trials(study)
    if finished + running <= n_trials:
        return None
    # RUNNING -> WAITING: Optuna's storages allow any change of an unfinished trial, and ask()
    # takes a WAITING trial with the same compare-and-set as an enqueued one.
    put_back(study, trial)
    return finished, running
