"""search/worker/progress.py: the worker's line at a trial's end: the study's progress, about how
long is left (from the durations of finished trials and how many run at once) and the best."""

from __future__ import annotations

import datetime as dt

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from search.worker.progress import duration, time_left, trial_end_line, waiting_explained

T0 = dt.datetime(2026, 12, 7, 12, 0, 0)


def _add(study: optuna.Study, state: TrialState, minutes: float | None, value: float | None) -> FrozenTrial:
    number = len(study.trials)
    trial = FrozenTrial(
        number=number, state=state, value=value, values=None, datetime_start=T0,
        datetime_complete=None if minutes is None else T0 + dt.timedelta(minutes=minutes),
        params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, user_attrs={},
        system_attrs={}, intermediate_values={}, trial_id=number)
    study.add_trial(trial)
    return study.trials[-1]


def test_time_left_is_the_median_trial_times_the_rounds_still_to_run() -> None:
    study = optuna.create_study(direction="maximize")
    assert time_left(study, 10, 2) is None  # nothing finished yet: no estimate
    _add(study, TrialState.COMPLETE, 10, 0.6)
    _add(study, TrialState.PRUNED, 2, None)
    _add(study, TrialState.COMPLETE, 12, 0.8)
    _add(study, TrialState.FAIL, 1, None)  # a failure neither counts nor times
    # 3 finished of 10: 7 left, 2 at once → 4 rounds of the median 10 min
    assert time_left(study, 10, 2) == 4 * 600
    _add(study, TrialState.RUNNING, None, None)
    for _ in range(3):
        _add(study, TrialState.RUNNING, None, None)
    assert time_left(study, 10, 2) == 2 * 600  # 4 running in the whole study
    assert time_left(study, 3, 2) == 0
    assert duration(4 * 600) == "40 min 00 s" and duration(2 * 3600 + 65) == "2 h 01 min"


def test_the_line_says_progress_time_left_and_the_best_so_far() -> None:
    study = optuna.create_study(direction="maximize")
    _add(study, TrialState.COMPLETE, 10, 0.6)
    last = _add(study, TrialState.COMPLETE, 10, 0.8)
    line = trial_end_line(study, last, 4, 20 * 60 + 5, 1)
    assert line.startswith("[##########..........] 2/4 finished, 20 min 05 s, about 20 min 00 s left"
                           " | best 0.8 (trial 1) | trial 1 COMPLETE")


def test_trials_left_waiting_are_explained_with_the_command_that_runs_them() -> None:
    study = optuna.create_study(direction="maximize")
    _add(study, TrialState.COMPLETE, 10, 0.6)
    assert waiting_explained(study, 1) is None
    study.enqueue_trial({"x": 0.1}, user_attrs={"enqueued": "seed_fixed"})
    study.enqueue_trial({"x": 0.2}, user_attrs={"enqueued": "rerun of 0", "rerun_of": 0, "unpruned": True})
    study.enqueue_trial({"x": 0.3})
    assert waiting_explained(study, 1) == (
        "3 trial(s) left WAITING: 1 (enqueued 'seed_fixed'), 2 (rerun of trial 0, unpruned), "
        "3 (put back: more workers asked than trials were left). The study has 1 finished trials "
        "of the 1 asked for, and a worker starts no trial beyond that; `octsearch run --trials 4` "
        "runs them")
