"""The study loop of one worker: ask, run the trial in its own process, tell; until N finished.

How many trials a worker starts, and when it waits or stops, is the counting rule of
:mod:`search.study.counting`: the study ends with exactly N finished trials. FAIL trials do not
count: a failed trial is replaced, but a worker stops after ``max_consecutive_failures``
failures in a row, since then the problem is the setup, not the trial.

A worker with several slots (``--parallel N``, :mod:`search.worker.slots`, :mod:`search.trial.placement`)
applies the same rule to start a trial in each free slot: its main thread counts and asks, one
trial at a time, so its own running trials count as RUNNING before it starts the next. Each
slot runs its trial as :func:`run_one_trial` does (own process, own heartbeat) and counts its
own failures in a row: a slot at the limit retires, and the worker stops with a WorkerError
once every slot has. When the study is done or time is up, it starts nothing and waits for
its running trials.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
import socket
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import optuna
from optuna.trial import TrialState

from octtrain.errors import ConfigError, clip
from search.contract import (
    RESUMES_TRIAL_ATTR,
    end_reason,
    enqueued_name,
    format_value,
    resume_source,
    runs_first,
    trial_dir,
    was_preempted,
    write_best_epoch,
    write_devices,
    write_failure,
    write_overrides,
    write_prune_reason,
    write_run,
)
from search.errors import StorageError, WorkerError
from search.interrupts import shielded
from search.notices import notice
from search.optuna_compat import claim_waiting, study_storage
from search.optuna_compat import trial_id as storage_id
from search.pruning import prune_kind
from search.space import SearchSpace
from search.storage import (
    OUTAGE_ENV,
    DatabaseUnreachableError,
    RetryingStorage,
    StudyStorage,
    asking,
    fail_stale,
    heartbeat,
    retire_checkpoint,
)
from search.study import Step, count_trials, keep_or_put_back, next_step
from search.trial import (
    Assignment,
    Outcome,
    TrialRequest,
    TrialResult,
    run_trial_process,
    with_wandb_identity,
)
from search.worker.pending import deliver_pending, drop_ended_queues, tell_or_keep
from search.worker.progress import trial_end_line
from search.worker.requeue import (
    checkpoint_path,
    drop_orphaned_checkpoints,
    requeue,
    requeue_host_failure,
    stopped_result,
)
from search.worker.slots import Slot, SlotPool, SlotRun


class TrialEndCallback(Protocol):
    """Work at a trial's end that is not the worker's (review evidence, checkpoint retention),
    as Optuna's ``callbacks=``: ``before_tell`` once the trial process returned a result (the
    trial's attributes are still writable), ``after_tell`` after every ``tell``. Neither may
    raise: a callback reports its own failures on ``out``."""

    def before_tell(self, study: optuna.Study, trial: optuna.Trial, out: TextIO | None) -> None: ...

    def after_tell(self, study: optuna.Study, trial: optuna.Trial, out: TextIO | None) -> None: ...


@dataclass(frozen=True)
class WorkerOptions:
    n_trials: int  # finished trials wanted in the study, all workers together
    timeout_s: float | None = None  # start no trial after this many seconds
    device: str | None = None  # runtime.device of every trial (None: the space's)
    num_processes: int | None = None  # runtime.num_processes of every trial (None: the space's)
    runs_dir: Path = Path("runs")  # trial run directories: RUNS_DIR/STUDY-ID/trial_NNNN
    checkpoint_dir: Path | None = None  # resume checkpoints of preempted trials (None: runs_dir)
    max_consecutive_failures: int = 3
    poll_s: float = 5.0  # how often a waiting worker looks at the study again
    fit_target: str = "octtrain:fit"
    env: Mapping[str, str] = field(default_factory=dict)  # extra environment of trial processes
    slots: tuple[Assignment, ...] = ()  # trials at once and their devices (none: one, all)
    on_trial_end: tuple[TrialEndCallback, ...] = ()  # review, checkpoint retention (octsearch run's)

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


def run_worker(
    study: optuna.Study, space: SearchSpace, storage: StudyStorage, options: WorkerOptions,
    *, out: TextIO | None = None,
) -> WorkerSummary:
    """Run trials until the study has ``options.n_trials`` finished trials (or time is up),
    up to one per slot at once (``options.slots``; none: one slot on every device)."""
    summary = WorkerSummary()
    pool = SlotPool(list(options.slots) or [Assignment(0, "any", ())], out)
    with shielded():  # a stop signal waits for the results being told (search.interrupts)
        deliver_pending(study, storage, options.runs_dir, space.objective.metric_key, _tell, out=out)
        drop_orphaned_checkpoints(study, options.checkpoint_dir or options.runs_dir, out=out)
    loop = _Loop(study, options, summary, pool, out, time.monotonic())
    try:
        while True:
            for ended in pool.done():
                loop.ended(ended)
            try:
                step = loop.next()
            except DatabaseUnreachableError:
                if not pool.busy():
                    raise
                pool.wait(options.poll_s)  # the running trials end first, each result kept
                continue
            if step is Step.STOP and not pool.busy():
                if pool.all_retired():
                    raise loop.failed
                drop_ended_queues(study, storage, options.runs_dir, out=out)
                drop_orphaned_checkpoints(study, options.checkpoint_dir or options.runs_dir, out=out)
                return summary
            slot = pool.free() if step is Step.START and loop.may_ask() else None
            if slot is not None:
                # From ask to the slot's thread taking the trial over, a stop signal waits: cut
                # in between, the trial would stay RUNNING with no heartbeat (search.interrupts).
                with shielded():
                    trial = ask_trial(study)
                    if not loop.keep(trial):
                        continue
                    summary.trials.append(trial.number)
                    try:
                        pool.start(slot, options.env, functools.partial(
                            _run_in_slot, study, space, storage, options, trial))
                    finally:
                        if not slot.busy:  # failed before its thread took the trial over
                            _tell(study, trial, TrialResult(Outcome.FAILED,
                                                            reason="worker: stopped at its start"))
                continue
            held = loop.hold_until - time.monotonic()
            pool.wait(min(options.poll_s, held) if step is Step.START and held > 0 else options.poll_s)
    except BaseException as err:
        pool.stop_all(err)  # every running trial stopped and failed, as a one-slot worker's
        raise


def _run_in_slot(study: optuna.Study, space: SearchSpace, storage: StudyStorage,
                 options: WorkerOptions, trial: optuna.Trial, slot: SlotRun) -> optuna.trial.FrozenTrial:
    return run_one_trial(study, space, storage, options, out=slot.out, trial=trial, slot=slot)


class _Loop:
    """The main thread's bookkeeping: the counting rule, time, each slot's failures."""

    def __init__(self, study: optuna.Study, options: WorkerOptions, summary: WorkerSummary,
                 pool: SlotPool, out: TextIO | None, start: float) -> None:
        self.study, self.options, self.summary, self.pool = study, options, summary, pool
        self.out, self.start = out, start
        self.waiting = False
        self.failed = WorkerError("no slot")  # raised once every slot has retired
        self.hold_until = 0.0  # after putting a trial back: no ask before this (monotonic)

    def next(self) -> Step:
        """:func:`next_step` for this worker; STOP also when time is up or every slot retired."""
        with shielded():  # each stale trial failed and re-queued whole
            fail_stale(self.study)
        finished, running = count_trials(self.study)
        self.summary.finished = finished
        step = next_step(finished, running, self.options.n_trials)
        timeout = self.options.timeout_s
        if step is Step.STOP:
            self.summary.stopped = (f"the study has {finished} finished trials "
                                    f"(asked for {self.options.n_trials})")
        elif timeout is not None and time.monotonic() - self.start >= timeout:
            self.summary.stopped, step = f"timeout of {timeout:g} s reached", Step.STOP
        elif self.pool.all_retired():
            step = Step.STOP
        if step is Step.WAIT and not self.pool.busy():
            if not self.waiting:
                notice(self.out, f"{finished} finished, {running} running in other workers: "
                          "waiting for them")
            self.waiting = True
        elif step is Step.START:
            self.waiting = False
        return step

    def may_ask(self) -> bool:
        """False while the worker holds back after putting a trial back (it waits instead)."""
        return time.monotonic() >= self.hold_until

    def keep(self, trial: optuna.Trial) -> bool:
        """The counting rule after ``ask`` (:func:`search.study.counting.keep_or_put_back`); a trial
        put back holds this worker back for a random part of its poll interval."""
        over = keep_or_put_back(self.study, trial, self.options.n_trials)
        if over is None:
            return True
        finished, running = over
        notice(self.out, f"trial {trial.number} put back in the queue: {finished} finished and "
                  f"{running} running with it, over {self.options.n_trials} (another worker "
                  "asked at the same time)")
        self.hold_until = time.monotonic() + random.uniform(0.2, 1.0) * self.options.poll_s
        return False

    def ended(self, slot: Slot) -> None:
        """A slot's trial ended: report it; count the slot's failures (retire it at the limit)."""
        if slot.error is not None:
            raise slot.error  # the worker failed (storage); interrupts were raised in main
        frozen = slot.result
        assert frozen is not None
        notice(slot.out, trial_end_line(self.study, frozen, self.options.n_trials,
                                        time.monotonic() - self.start, len(self.pool.slots)))
        if frozen.state != TrialState.FAIL:
            slot.failures_in_a_row = 0
            return
        if was_preempted(frozen):  # stopped by a signal and re-queued: not a failure of the setup
            return
        slot.failures_in_a_row += 1
        if slot.failures_in_a_row < self.options.max_consecutive_failures:
            return
        last = clip(end_reason(frozen))
        slot.retired = (f"{slot.failures_in_a_row} trials in a row failed; stopping this "
                        f"{'slot' if self.pool.prefixed else 'worker'}. Last (trial "
                        f"{frozen.number}): {last}")
        self.failed = WorkerError(slot.retired if not self.pool.prefixed else
                                  f"every slot stopped; {slot.name}: {slot.retired}")
        if self.pool.prefixed:
            notice(slot.out, slot.retired)


# A worker asks and tells itself and keeps the heartbeat in storage.heartbeat(), so Optuna's
# warning that heartbeats belong to Study.optimize is wrong here. Filtered for the process, once:
# warnings.catch_warnings() around each ask is not thread-safe, and slots ask from threads.
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


def ask_trial(study: optuna.Study) -> optuna.Trial:
    """The next trial: a continuation of a preempted trial or a stale trial's retry first
    (:func:`search.contract.runs_first`), then what ``study.ask`` takes (the other WAITING trials
    by number, then a new one)."""
    with asking(study_storage(study)):
        return claim_waiting(study, runs_first) or study.ask()


def run_one_trial(
    study: optuna.Study, space: SearchSpace, storage: StudyStorage, options: WorkerOptions,
    *, out: TextIO | None = None, trial: optuna.Trial | None = None, slot: SlotRun | None = None,
) -> optuna.trial.FrozenTrial:
    """Ask one trial (or take ``trial``, just asked), run it in a child process (in ``slot``:
    none, a worker of one slot on every device), tell its state, then call
    ``options.on_trial_end``. Never leaves it RUNNING."""
    slot = slot or SlotRun(env=options.env, out=out)
    if trial is None:
        trial = ask_trial(study)
    trial_id = storage_id(trial)  # how the child takes it over (optuna_compat.take_over)
    try:
        run_dir = _run_dir(study, options, trial.number)
        with heartbeat(storage, trial_id, out=out):
            result = _run(study, space, storage, trial, options, slot)
    except BaseException as err:  # interrupted, or the worker itself failed
        _tell(study, trial, stopped_result(study, trial_id, err))
        if not isinstance(err, Exception):
            raise
    else:
        for callback in options.on_trial_end:
            callback.before_tell(study, trial, out)
        # kept in run_dir if the database stays unreachable
        tell_or_keep(study, storage, trial, result, run_dir, space.objective.metric_key, _tell)
    for callback in options.on_trial_end:
        callback.after_tell(study, trial, out)
    return storage.get_trial(trial_id)


def _run_dir(study: optuna.Study, options: WorkerOptions, number: int) -> Path:
    return trial_dir(options.runs_dir, study, number)


def _run(study: optuna.Study, space: SearchSpace, storage: StudyStorage, trial: optuna.Trial,
         options: WorkerOptions, slot: SlotRun) -> TrialResult:
    out = slot.out
    params = space.suggest(trial)
    overrides: dict[str, Any] = dict(params)
    if options.device is not None:
        overrides["runtime.device"] = options.device
    if options.num_processes is not None:
        overrides["runtime.num_processes"] = options.num_processes
    write_overrides(trial, overrides)
    if slot.devices:
        write_devices(trial, slot.devices)
    try:
        cfg = space.trainer_config(overrides)
        cfg = with_wandb_identity(cfg, study.study_name, trial.number, params,
                                  study_id=storage.get_study_id_from_name(study.study_name),
                                  enqueued=enqueued_name(trial))
    except ConfigError as err:
        return TrialResult(Outcome.FAILED, reason=f"invalid trainer config: {err}")
    run_dir = _run_dir(study, options, trial.number)
    unfreeze = cfg.model.unfreeze_at_epoch if cfg.model.freeze_encoder else -1
    write_run(trial, unfreeze_at_epoch=unfreeze, epochs=cfg.train.epochs, run_dir=run_dir,
              host=socket.gethostname())
    shown = ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
    notice(out, f"trial {trial.number} started: {shown}")
    resume_from = resume_source(trial)
    stopped = trial.user_attrs.get(RESUMES_TRIAL_ATTR)
    if resume_from is not None:
        notice(out, f"trial {trial.number} resumes preempted trial {stopped} from {resume_from}")
    elif stopped is not None:
        notice(out, f"trial {trial.number} starts preempted trial {stopped} again (it wrote no "
                    "resume checkpoint)")
    request = TrialRequest(
        study_name=study.study_name, trial_id=storage_id(trial), trial_number=trial.number,
        run_dir=str(run_dir), config=cfg.to_dict(), fit_target=options.fit_target,
        resume_from=resume_from, preempt_to=str(checkpoint_path(
            options.checkpoint_dir or options.runs_dir, study, trial.number)),
    )
    # On XLA, trials of one shape compile once per host (a config's runtime.xla_cache_dir wins).
    xla_cache = options.runs_dir.resolve() / "xla-cache" / socket.gethostname()
    env = {"OCTTRAIN_XLA_CACHE_DIR": str(xla_cache), **slot.env}
    if isinstance(storage, RetryingStorage):  # the trial process rides out the same outage
        env[OUTAGE_ENV] = str(storage.outage.limit_s)
    return run_trial_process(request, storage.url, echo=out, prefix=f"  [trial {trial.number}] ",
                             env=env, stop=slot.stop)


def _tell(study: optuna.Study, trial: optuna.Trial, result: TrialResult) -> None:
    """Record how the trial ended. A trial another worker already failed as stale (this
    worker's heartbeat lapsed) stays as it is: its retry is queued. Once told, a continuation's
    resume checkpoint goes (nothing resumes it any more: the trial ended, or it is re-queued
    from a newer checkpoint or from the start), whatever the trial process managed to do."""
    try:
        if result.state is Outcome.COMPLETE:
            assert result.value is not None and math.isfinite(result.value)
            write_best_epoch(trial, result.best_epoch)
            study.tell(trial, result.value)
        elif result.state is Outcome.PREEMPTED:
            requeue(study, trial, result)  # FAIL, and a WAITING trial that resumes it
        elif result.state is Outcome.HOST_FAILED:
            requeue_host_failure(study, trial, result)  # FAIL, and its configuration again
        elif result.state is Outcome.PRUNED:
            write_prune_reason(trial, result.reason, prune_kind(result.reason or ""))
            study.tell(trial, state=TrialState.PRUNED)
        else:
            write_failure(trial, result.reason, result.output_tail)
            study.tell(trial, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return
    except DatabaseUnreachableError:
        raise  # the result is kept on disk (search.worker.pending), the trial left RUNNING
    except Exception as err:
        # The storage failed under us: a FAIL is the least wrong end; the heartbeat stops, so
        # another worker fails the trial as stale if even this does not reach the database.
        with contextlib.suppress(Exception):
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise StorageError(f"cannot record the end of trial {trial.number}: "
                           f"{type(err).__name__}: {err}") from err
    retire_checkpoint(trial, result.checkpoint)
