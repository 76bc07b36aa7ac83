"""``octsearch rerun N``: trial N's configuration queued again, to run its whole budget unpruned.

A pruner judges a trial from its first epochs; a late bloomer (:mod:`search.review.late_bloomers`)
may have been stopped just before its jump. Running its configuration again with pruning off
settles it. The rerun is an ordinary enqueued trial (Optuna's ``enqueue_trial``: the same
parameters, suggested as fixed values) with three user attributes (:mod:`search.contract`): its
``enqueued`` name ``rerun of N``, ``rerun_of`` N, and ``unpruned``, which the trial's reporter
honours by never asking the pruner (:class:`search.trial.EpochReporter`). A stale or stopped rerun
that is re-queued keeps them.

It counts like any trial: a worker takes it when the study has room for one more finished trial
(``octsearch run --trials`` above the finished ones), before any newly sampled one, after the
WAITING trials with lower numbers.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.contract import ENQUEUED_ATTR, RERUN_OF_ATTR, UNPRUNED_ATTR, rerun_of
from search.errors import OctsearchError
from search.study.counting import count_trials


def rerun_attrs(number: int) -> dict[str, object]:
    """The user attributes of a rerun of trial ``number``: named for it, never pruned."""
    return {ENQUEUED_ATTR: f"rerun of {number}", UNPRUNED_ATTR: True, RERUN_OF_ATTR: number}


def _rerunnable(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial ``number`` if its configuration can run again; else the one-line reason why not."""
    trials = study.get_trials(deepcopy=False)
    where = f"study {study.study_name!r}"
    if not 0 <= number < len(trials):
        held = f"trials 0-{len(trials) - 1}" if trials else "no trials"
        raise OctsearchError(f"{where} has no trial {number} (it has {held})")
    trial = trials[number]
    if trial.state in (TrialState.RUNNING, TrialState.WAITING):
        raise OctsearchError(f"trial {number} of {where} is {trial.state.name}: rerun a trial that ended")
    if not trial.params:
        raise OctsearchError(f"trial {number} of {where} has no parameters to run again (it ended before "
                             "it sampled any)")
    queued = [t.number for t in trials if rerun_of(t) == number
              and t.state in (TrialState.WAITING, TrialState.RUNNING)]
    if queued:
        raise OctsearchError(f"trial {number} of {where} is already queued to run again, as trial {queued[0]}")
    return trial


def enqueue_rerun(study: optuna.Study, number: int) -> str:
    """Queue trial ``number``'s parameters again as an unpruned trial; one line saying what was
    queued and how it will run. :class:`~search.errors.OctsearchError` if it cannot be rerun."""
    trial = _rerunnable(study, number)
    study.enqueue_trial(dict(trial.params), user_attrs=rerun_attrs(number))
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    new = max(t.number for t in waiting if rerun_of(t) == number)
    ahead = sum(t.number < new for t in waiting)
    finished, running = count_trials(study)
    return (f"trial {number}'s configuration is queued as trial {new} ('rerun of {number}'), to run its "
            f"whole budget without pruning; a worker starts it when the study has room: it has {finished} "
            f"finished and {running} running trials (octsearch run --trials {finished + running + 1} or "
            f"more{f'; {ahead} waiting trials go first' if ahead else ''})")
