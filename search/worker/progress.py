"""What a worker says about the study: when one of its trials ends, how far the study is, how long
it has taken, about how long it has left, and the best trial so far; when it stops, why trials
are still WAITING (:func:`waiting_explained`).

The time left is an estimate, said as "about": the median duration of the study's finished
trials (start to end, all workers) times the rounds of trials still to run, a round being as
many trials as run at once in the whole study now (at least this worker's slots). Pruned trials
are short, so it shrinks as pruning gets going; it is blank until a trial has finished.
"""

from __future__ import annotations

import math
import statistics

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.contract import (
    RESUMES_TRIAL_ATTR,
    describe_trial,
    enqueued_name,
    format_value,
    rerun_of,
    resume_source,
    retried_trial,
)
from search.ranking import ranked
from search.study import FINISHED


def bar(done: int, total: int, width: int = 20) -> str:
    filled = min(width, done * width // max(total, 1))
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def time_left(study: optuna.Study, n_trials: int, slots: int) -> float | None:
    """Seconds until the study has ``n_trials`` finished trials, about (see module); None
    before any trial has finished, 0 when it has them."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    finished = [t for t in trials if t.state in FINISHED]
    remaining = n_trials - len(finished)
    if remaining <= 0:
        return 0.0
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished
                 if t.datetime_start is not None and t.datetime_complete is not None]
    if not durations:
        return None
    at_once = max(slots, sum(t.state == TrialState.RUNNING for t in trials), 1)
    return statistics.median(durations) * math.ceil(remaining / at_once)


def best_so_far(study: optuna.Study) -> str:
    """``best 0.8868 (trial 5)``, or ``""`` before a trial has completed."""
    best = next((t for t in ranked(study) if t.state == TrialState.COMPLETE), None)
    return "" if best is None else f"best {format_value(best.value)} (trial {best.number})"


def trial_end_line(study: optuna.Study, frozen: FrozenTrial, n_trials: int, elapsed_s: float,
                   slots: int) -> str:
    """``[####....] 12/40 finished, 14 min 05 s, about 32 min left | best 0.8868 (trial 5) |
    trial 12 ...``: the worker's line when ``frozen`` has ended."""
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    head = f"{bar(finished, n_trials)} finished, {duration(elapsed_s)}"
    left = time_left(study, n_trials, slots)
    if left:
        head += f", about {duration(left)} left"
    best = best_so_far(study)
    return " | ".join(part for part in (head, best, describe_trial(frozen)) if part)


def waiting_explained(study: optuna.Study, n_trials: int) -> str | None:
    """Why trials are still WAITING when a worker stops (None: none is): each one's kind (an
    enqueued trial, a rerun, a continuation or a stale retry, one put back by the counting rule)
    and how to run them."""
    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if not waiting:
        return None
    finished = len(study.get_trials(deepcopy=False, states=FINISHED))
    kinds = ", ".join(f"{t.number} ({_waiting_kind(t)})" for t in waiting)
    return (f"{len(waiting)} trial(s) left WAITING: {kinds}. The study has {finished} finished "
            f"trials of the {n_trials} asked for, and a worker starts no trial beyond that; "
            f"`octsearch run --trials {finished + len(waiting)}` runs them")


def _waiting_kind(trial: FrozenTrial) -> str:
    stopped = trial.user_attrs.get(RESUMES_TRIAL_ATTR)
    if isinstance(stopped, int):
        return (f"continues preempted trial {stopped} from its checkpoint" if resume_source(trial)
                else f"starts preempted trial {stopped} again")
    rerun = rerun_of(trial)
    if rerun is not None:
        return f"rerun of trial {rerun}, unpruned"
    retried = retried_trial(trial)
    if retried is not None:
        return f"retry of stale trial {retried}"
    name = enqueued_name(trial)
    if name:
        return f"enqueued {name!r}"
    return "put back: more workers asked than trials were left"
