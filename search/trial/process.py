"""One trial in its own process, so a crash or OOM of the trainer fails the trial, not the worker.

Parent (the worker, :func:`run_trial_process`): writes ``request.json`` into the trial's run
directory, starts ``python -m search.trial request.json`` in a new session (it dies with
the worker: :mod:`search.trial.lifeline`), streams its output to ``trial.log`` and to the worker's
stderr, and reads back ``result.json``. A child
that exits without a result (killed, segfault, XLA abort) is a failed trial whose reason is
the tail of its output. When the parent is interrupted the child's whole process group is
terminated before the exception goes on.

Child (:func:`run_child`): opens the same storage, takes the trial by id, builds the pruner
and objective from the space stored with the study, and runs the fit target (``octtrain.fit``)
with an :class:`~search.trial.reporter.EpochReporter`. It never tells the trial's state: it writes a
:class:`TrialResult` (an :class:`Outcome`: complete / pruned / failed) for the parent to tell.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

import optuna

from octtrain.config import config_from_dict
from octtrain.errors import DivergedError, HostError, OcttrainError, describe_exit, host_errors
from octtrain.files import write_json_atomic
from octtrain.runtime import Preempted, stop_on_signals
from search.contract import write_preempted
from search.optuna_compat import take_over
from search.pruning import DIVERGED_KIND
from search.ranking import best_step
from search.storage import DatabaseUnreachableError, Outage, open_storage, outage_limit_from_env
from search.study import stored_space
from search.trial.echo import Echo
from search.trial.epoch_queue import QUEUE_FILE
from search.trial.lifeline import lifeline
from search.trial.reporter import EpochReporter, metric_value

REQUEST_FILE = "request.json"
RESULT_FILE = "result.json"
LOG_FILE = "trial.log"
TAIL_LINES = 20  # lines of a crashed child's output kept as the trial's fail reason
KILL_GRACE_S = 10.0  # after SIGKILL, how long to wait for the child and its output
STOP_GRACE_S = 25.0  # after SIGTERM, how long a child may take to stop (finish its optimizer
# step, write its resume checkpoint) before SIGKILL: within a spot VM's ~30 s notice
STORAGE_ENV = "OCTSEARCH_TRIAL_STORAGE"
# Signals that ask a trial process to stop (a worker's SIGTERM, a scheduler's SIGTERM or SIGINT):
# it writes a resume checkpoint at its next optimizer step and the trial is re-queued; one that
# ends the process before its handler is in place re-queues the trial to start again. SIGKILL is
# not among them: the kernel's OOM killer sends it, and a trial that dies of it failed.
STOPPED_BY = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
HOST_FAILURE_EXIT = os.EX_TEMPFAIL  # the trial process's exit status when the host failed a
# write of its own (its result): its one line says which; the trial is re-queued
HOST_PROBLEM = "host problem: "  # how the reason of a trial the host failed starts


@dataclass(frozen=True)
class TrialRequest:
    """What a trial process runs; written as JSON into the trial's run directory.

    The storage URL, which may hold a password, goes to the child in the environment
    (:data:`STORAGE_ENV`), not into the run directory.
    """

    study_name: str
    trial_id: int
    trial_number: int
    run_dir: str
    config: dict[str, Any]  # the resolved trainer config, TrainConfig.to_dict()
    fit_target: str = "octtrain:fit"  # "module:function" with octtrain.fit's signature
    resume_from: str | None = None  # continue this resume checkpoint (a preempted trial's)
    preempt_to: str | None = None  # on SIGTERM, write a resume checkpoint here and stop

    def write(self, path: Path) -> None:
        write_json_atomic(path, dataclasses.asdict(self), indent=1, allow_nan=False)

    @classmethod
    def read(cls, path: Path) -> TrialRequest:
        return cls(**json.loads(path.read_text()))


class Outcome(str, Enum):
    """How a trial process ended; the value is what ``result.json`` holds."""

    COMPLETE = "complete"  # with a value
    PRUNED = "pruned"  # by the pruner, or because training diverged
    FAILED = "failed"
    HOST_FAILED = "host_failed"  # the host failed it (a full disk, a folder gone): re-queued
    PREEMPTED = "preempted"  # stopped by a signal (with a resume checkpoint, if it could write
    # one): re-queued to resume from it, or to start again


@dataclass(frozen=True)
class TrialResult:
    """How a trial process ended, and with what value or reason."""

    state: Outcome
    value: float | None = None
    best_epoch: int | None = None
    reason: str | None = None
    output_tail: str | None = None  # last lines of a child that died without a result
    checkpoint: str | None = None  # PREEMPTED: the resume checkpoint
    epochs_done: int | None = None  # PREEMPTED: epochs validated and reported before the stop

    def write(self, path: Path) -> None:
        write_json_atomic(path, {**dataclasses.asdict(self), "state": self.state.value},
                          indent=1, allow_nan=False)

    @classmethod
    def read(cls, path: Path) -> TrialResult | None:
        try:
            record = json.loads(path.read_text())
            return cls(**{**record, "state": Outcome(record["state"])})
        except (OSError, ValueError, TypeError, KeyError):
            return None


# ---------------------------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------------------------


class StopRequest:
    """Another thread's request to stop a running trial process: the thread waiting for it
    terminates it and raises the request's KeyboardInterrupt, as if interrupted itself (only a
    worker's main thread receives Ctrl-C and SIGTERM; its slots' threads run trials)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.error = KeyboardInterrupt()

    def request(self, error: KeyboardInterrupt) -> None:
        self.error = error
        self._event.set()

    def wait(self, timeout_s: float) -> bool:
        return self._event.wait(timeout_s)


STOP_POLL_S = 0.2  # how often a stoppable wait looks at its child


def run_trial_process(
    request: TrialRequest, storage_url: str, *, echo: TextIO | None = None, prefix: str = "",
    env: Mapping[str, str] | None = None, stop: StopRequest | None = None,
) -> TrialResult:
    """Run the trial in a child process and return how it ended (blocks until then, or until
    ``stop`` is requested: then the child is terminated and the request's error raised)."""
    run_dir = Path(request.run_dir)
    result_path = run_dir / RESULT_FILE
    with host_errors("the trial's run directory", run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        result_path.unlink(missing_ok=True)
        request.write(run_dir / REQUEST_FILE)
    child_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", STORAGE_ENV: storage_url}
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with open(run_dir / LOG_FILE, "a") as log, lifeline() as (lifeline_env, lifeline_fds):
        with _stop_signals_blocked():  # only while it starts: the child unblocks them when it can
            proc = subprocess.Popen(
                [sys.executable, "-m", "search.trial", str(run_dir / REQUEST_FILE)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, errors="replace", env={**child_env, **lifeline_env},
                pass_fds=lifeline_fds,  # the child dies with this process (search.trial.lifeline)
                start_new_session=True,  # Ctrl-C reaches the worker, which then stops the child
            )
        reader = threading.Thread(target=_pump, args=(proc, log, tail, echo, prefix), daemon=True)
        reader.start()
        try:
            returncode = proc.wait() if stop is None else _wait_or_stop(proc, stop)
        finally:
            if proc.poll() is None:
                _terminate(proc)
            reader.join(timeout=KILL_GRACE_S)
    result = TrialResult.read(result_path)
    if result is not None:
        return result  # even if the child crashed afterwards (e.g. in runtime teardown)
    lines = [line.rstrip() for line in tail if line.strip()]
    last = lines[-1].strip() if lines else "no output"
    if returncode == HOST_FAILURE_EXIT:
        return TrialResult(Outcome.HOST_FAILED, reason=last[last.find(HOST_PROBLEM):]
                           if HOST_PROBLEM in last else f"{HOST_PROBLEM}{last}", output_tail="\n".join(lines))
    if -returncode in STOPPED_BY:  # before it could catch the signal (still starting): a stop
        return TrialResult(Outcome.PREEMPTED, reason=f"trial process {describe_exit(returncode)} "
                           "before it wrote a resume checkpoint", output_tail="\n".join(lines))
    return TrialResult(Outcome.FAILED, reason=f"trial process {describe_exit(returncode)} "
                       f"without a result: {last}", output_tail="\n".join(lines))


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block :data:`STOPPED_BY` in this thread while it starts the trial process, which inherits
    the mask: a stop signal that reaches the trial process while it is still importing waits
    until :func:`run_child` can honour it (a resume checkpoint), instead of ending it with
    Python's KeyboardInterrupt traceback. Signals to this process go to its other threads."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPED_BY)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _wait_or_stop(proc: subprocess.Popen[str], stop: StopRequest) -> int:
    while (returncode := proc.poll()) is None:
        if stop.wait(STOP_POLL_S):
            raise stop.error
    return returncode


def _pump(proc: subprocess.Popen[str], log: TextIO, tail: deque[str], echo: TextIO | None,
          prefix: str) -> None:
    assert proc.stdout is not None
    shown = Echo(echo, prefix) if echo is not None else None
    for line in proc.stdout:
        log.write(line)
        log.flush()
        tail.append(line)
        if shown is not None:
            shown.write(line)
    if shown is not None:
        shown.close()


def _terminate(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the child's process group (it stops at its next optimizer step with a resume
    checkpoint; its data loaders ignore SIGTERM, its ranks stop together), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


# ---------------------------------------------------------------------------------------------
# Child side
# ---------------------------------------------------------------------------------------------


def _import_target(target: str) -> Callable[..., Any]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


def run_child(request_path: Path) -> TrialResult:
    """Run the trial described by ``request_path``; write and return its result."""
    request = TrialRequest.read(request_path)
    with stop_on_signals(STOPPED_BY):  # a stop from here on: resumable, at the next optimizer step
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPPED_BY)  # those sent meanwhile arrive now
        try:
            return _run_child(request)
        except HostError as err:  # its result could not be written: one line, a status that says so
            print(f"octsearch: trial process: {HOST_PROBLEM}{err}", file=sys.stderr, flush=True)
            sys.exit(HOST_FAILURE_EXIT)


def _run_child(request: TrialRequest) -> TrialResult:
    run_dir = Path(request.run_dir)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    outage_s = outage_limit_from_env()  # the worker reached the database just now: an
    storage = Outage(outage_s).call(  # outage starting here is ridden out too
        lambda: open_storage(os.environ[STORAGE_ENV], heartbeat=False, create=False,
                             outage_s=outage_s), "open storage")
    study = optuna.load_study(study_name=request.study_name, storage=storage,
                              sampler=optuna.samplers.RandomSampler())  # the worker sampled
    space = stored_space(study)
    study.pruner = space.pruner.build()  # Study.pruner is a plain attribute
    trial = take_over(study, request.trial_id)
    try:
        result = _fit(request, trial, space.objective.metric_key, space.objective.maximize)
    except BaseException as err:  # noqa: BLE001 - a record for the parent, then re-raise
        failed = TrialResult(Outcome.FAILED, reason=f"{type(err).__name__}: {err}")
        with contextlib.suppress(OSError):
            failed.write(run_dir / RESULT_FILE)
        raise
    with host_errors("the trial's result", run_dir / RESULT_FILE):
        result.write(run_dir / RESULT_FILE)
    return result


def _preempted(err: Preempted) -> TrialResult:
    return TrialResult(Outcome.PREEMPTED, reason=str(err), checkpoint=err.checkpoint,
                       epochs_done=err.epochs_done)


def _keep_preempted(trial: optuna.trial.Trial, run_dir: Path, result: TrialResult) -> None:
    """The stopped trial's result file, then its record in the study: both before the queued
    epochs are delivered, which waits out an outage. Killed meanwhile (its worker was), the
    trial still names its checkpoint, so the stale sweep resumes it instead of starting again
    (search.storage.continuation); the record is written again by whoever re-queues it."""
    with contextlib.suppress(OSError):
        result.write(run_dir / RESULT_FILE)
    with contextlib.suppress(DatabaseUnreachableError):
        write_preempted(trial, {"reason": result.reason, "epochs_done": result.epochs_done,
                                "checkpoint": result.checkpoint})


def _fit(request: TrialRequest, trial: optuna.trial.Trial, metric_key: str,
         maximize: bool) -> TrialResult:
    fit = _import_target(request.fit_target)
    reporter = EpochReporter(trial, metric_key, Path(request.run_dir) / QUEUE_FILE)
    resume = {k: v for k, v in (("resume_from", request.resume_from),
                                ("preempt_to", request.preempt_to)) if v is not None}
    try:
        cfg = config_from_dict(request.config, source="trial config")
        try:
            fitted = fit(cfg, out_dir=Path(request.run_dir), on_epoch_end=reporter, progress=True,
                         **resume)
        except Preempted as err:
            _keep_preempted(trial, Path(request.run_dir), _preempted(err))
            raise
        finally:
            reporter.finish()  # epochs queued in an outage; what stays queued, the worker sends
    except Preempted as err:
        return _preempted(err)
    except optuna.TrialPruned as err:
        return TrialResult(Outcome.PRUNED, reason=str(err))
    except DivergedError as err:
        return TrialResult(Outcome.PRUNED, reason=f"{DIVERGED_KIND}: {err}")
    except HostError as err:  # not the configuration's failure: no traceback, re-queued
        return TrialResult(Outcome.HOST_FAILED, reason=f"{HOST_PROBLEM}{err}")
    except OcttrainError as err:
        return TrialResult(Outcome.FAILED, reason=f"{type(err).__name__}: {err}")
    except Exception as err:
        traceback.print_exc()
        return TrialResult(Outcome.FAILED, reason=f"{type(err).__name__}: {err}")
    values = {int(m.get("epoch", i)): metric_value(m, metric_key)
              for i, m in enumerate(fitted.history)}
    value, epoch = best_step(values, maximize)
    if math.isnan(value):
        return TrialResult(Outcome.FAILED, reason=f"{metric_key} is NaN in every epoch")
    return TrialResult(Outcome.COMPLETE, value=value, best_epoch=epoch)
