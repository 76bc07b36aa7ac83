"""The study loop of one worker: ask, run the trial in its own process, tell; until N finished.

``--trials N`` counts *finished* (COMPLETE + PRUNED) trials of the whole study, across all
workers and runs. Before each trial a worker fails stale trials (heartbeat), then counts
finished and RUNNING trials (:func:`next_step`):

- ``finished >= N``: stop;
- ``finished + running >= N``: the remaining trials are running elsewhere: wait, polling,
  and take over if one of them fails or goes stale;
- otherwise start a trial.

So the study ends with N finished trials, and only workers asking at the same instant can
start more (at most one extra trial per such worker). FAIL trials do not count: a failed
trial is replaced, but a worker stops after ``max_consecutive_failures`` failures in a row,
since then the problem is the setup, not the trial.
"""

from __future__ import annotations

import contextlib
import math
import socket
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

import optuna
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import TrialState

from octtrain.errors import ConfigError, clip
from search.errors import StorageError, WorkerError
from search.record import (
    end_reason,
    runs_folder,
    write_best_epoch,
    write_failure,
    write_overrides,
    write_prune_reason,
    write_run,
)
from search.report import describe_trial, format_value
from search.space import SearchSpace
from search.storage import heartbeat
from search.trial_process import Outcome, TrialRequest, TrialResult, run_trial_process

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class WorkerOptions:
    n_trials: int  # finished trials wanted in the study, all workers together
    timeout_s: float | None = None  # start no trial after this many seconds
    device: str | None = None  # runtime.device of every trial (None: the space's)
    runs_dir: Path = Path("runs")  # trial run directories: RUNS_DIR/STUDY-ID/trial_NNNN
    max_consecutive_failures: int = 3
    poll_s: float = 5.0  # how often a waiting worker looks at the study again
    fit_target: str = "octtrain:fit"
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment of trial processes

    def __post_init__(self) -> None:
        if self.n_trials < 1:
            raise ValueError(f"n_trials must be at least 1, but got n_trials={self.n_trials}.")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, but got timeout_s={self.timeout_s}.")
        if self.max_consecutive_failures < 1:
            raise ValueError("max_consecutive_failures must be at least 1, but got "
                             f"max_consecutive_failures={self.max_consecutive_failures}.")


@dataclass
class WorkerSummary:
    trials: list[int] = field(default_factory=list)  # numbers of the trials this worker ran
    finished: int = 0  # finished trials in the study when the worker stopped
    stopped: str = ""  # why the worker stopped


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
    """The counting rule of the module docstring."""
    if finished >= n_trials:
        return Step.STOP
    if finished + running >= n_trials:
        return Step.WAIT
    return Step.START


def _progress(out: TextIO | None, text: str) -> None:
    if out is not None:
        out.write(f"octsearch: {text}\n")
        out.flush()


def _bar(done: int, total: int, width: int = 20) -> str:
    filled = min(width, done * width // max(total, 1))
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"


def run_worker(
    study: optuna.Study, space: SearchSpace, storage: RDBStorage, options: WorkerOptions,
    *, out: TextIO | None = None,
) -> WorkerSummary:
    """Run trials until the study has ``options.n_trials`` finished trials (or time is up)."""
    summary = WorkerSummary()
    start = time.monotonic()
    failures_in_a_row = 0
    waiting = False
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            fail_stale_trials(study)
        finished, running = count_trials(study)
        summary.finished = finished
        step = next_step(finished, running, options.n_trials)
        if step is Step.STOP:
            summary.stopped = (f"the study has {finished} finished trials "
                               f"(asked for {options.n_trials})")
            return summary
        if options.timeout_s is not None and time.monotonic() - start >= options.timeout_s:
            summary.stopped = f"timeout of {options.timeout_s:g} s reached"
            return summary
        if step is Step.WAIT:
            if not waiting:
                _progress(out, f"{finished} finished, {running} running in other workers: "
                          "waiting for them")
            waiting = True
            time.sleep(options.poll_s)
            continue
        waiting = False
        frozen = run_one_trial(study, space, storage, options, out=out)
        summary.trials.append(frozen.number)
        finished, _ = count_trials(study)
        summary.finished = finished
        elapsed = _duration(time.monotonic() - start)
        _progress(out, f"{_bar(finished, options.n_trials)} finished, {elapsed} | "
                  f"{describe_trial(frozen)}")
        if frozen.state == TrialState.FAIL:
            failures_in_a_row += 1
            if failures_in_a_row >= options.max_consecutive_failures:
                last = clip(end_reason(frozen))
                raise WorkerError(f"{failures_in_a_row} trials in a row failed; stopping this "
                                  f"worker. Last (trial {frozen.number}): {last}")
        else:
            failures_in_a_row = 0


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def run_one_trial(
    study: optuna.Study, space: SearchSpace, storage: RDBStorage, options: WorkerOptions,
    *, out: TextIO | None = None,
) -> optuna.trial.FrozenTrial:
    """Ask one trial, run it in a child process, tell its state. Never leaves it RUNNING."""
    with warnings.catch_warnings():
        # We ask and tell ourselves and keep the heartbeat in storage.heartbeat().
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        trial = study.ask()
    trial_id = trial._trial_id  # Optuna's Trial(study, trial_id) is how the child takes it over
    try:
        with heartbeat(storage, trial_id, out=out):
            result = _run(study, space, storage, trial, options, out)
    except BaseException as err:  # interrupted, or the worker itself failed
        if isinstance(err, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (named) from the CLI
            reason = f"interrupted by {err}" if str(err) else "interrupted"
        else:
            reason = f"{type(err).__name__}: {err}"
        _tell(study, trial, TrialResult(Outcome.FAILED, reason=f"worker: {reason}"))
        if not isinstance(err, Exception):
            raise
    else:
        _tell(study, trial, result)
    return storage.get_trial(trial_id)


def _run(study: optuna.Study, space: SearchSpace, storage: RDBStorage, trial: optuna.Trial,
         options: WorkerOptions, out: TextIO | None) -> TrialResult:
    params = space.suggest(trial)
    overrides: dict[str, Any] = dict(params)
    if options.device is not None:
        overrides["runtime.device"] = options.device
    write_overrides(trial, overrides)
    try:
        cfg = space.trainer_config(overrides)
    except ConfigError as err:
        return TrialResult(Outcome.FAILED, reason=f"invalid trainer config: {err}")
    run_dir = (options.runs_dir / runs_folder(study) / f"trial_{trial.number:04d}").resolve()
    unfreeze = cfg.model.unfreeze_at_epoch if cfg.model.freeze_encoder else -1
    write_run(trial, unfreeze_at_epoch=unfreeze, run_dir=run_dir, host=socket.gethostname())
    shown = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
    _progress(out, f"trial {trial.number} started: {shown}")
    request = TrialRequest(
        study_name=study.study_name, trial_id=trial._trial_id, trial_number=trial.number,
        run_dir=str(run_dir), config=cfg.to_dict(), fit_target=options.fit_target,
    )
    # On XLA, trials of one shape compile once per host (a config's runtime.xla_cache_dir wins).
    xla_cache = options.runs_dir.resolve() / "xla-cache" / socket.gethostname()
    return run_trial_process(request, storage.url, echo=out, prefix=f"  [trial {trial.number}] ",
                             env={"OCTTRAIN_XLA_CACHE_DIR": str(xla_cache), **(options.env or {})})


def _tell(study: optuna.Study, trial: optuna.Trial, result: TrialResult) -> None:
    """Record how the trial ended. A trial another worker already failed as stale (this
    worker's heartbeat lapsed) stays as it is: its retry is queued."""
    try:
        if result.state is Outcome.COMPLETE:
            assert result.value is not None and math.isfinite(result.value)
            write_best_epoch(trial, result.best_epoch)
            study.tell(trial, result.value)
        elif result.state is Outcome.PRUNED:
            write_prune_reason(trial, result.reason)
            study.tell(trial, state=TrialState.PRUNED)
        else:
            write_failure(trial, result.reason, result.output_tail)
            study.tell(trial, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    except Exception as err:
        # The storage failed under us: a FAIL is the least wrong end; the heartbeat stops, so
        # another worker fails the trial as stale if even this does not reach the database.
        with contextlib.suppress(Exception):
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise StorageError(f"cannot record the end of trial {trial.number}: "
                           f"{type(err).__name__}: {err}") from err
