"""Run a function on several data-parallel ranks, with the epoch callback kept in the caller.

The calling process is the *coordinator*: it starts the ranks and keeps the ``on_epoch_end``
callback. Rank 0 sends each epoch's metrics to the coordinator over a local socket, the
coordinator runs the callback (for a search: ``trial.report`` / ``should_prune``) and answers
continue or stop; rank 0 then sends that decision to every rank, so all ranks leave the loop at
the same epoch and none hangs in a collective when a trial is pruned. Every rank also reports
its own failure over that socket (the exception, pickled so that the package's exceptions keep
their attributes), so the coordinator can name the rank that failed first instead of the peers
that merely lost it.

CPU/CUDA ranks are spawned here and joined by ``torch.distributed``; XLA ranks come from
``torch_xla.launch`` (:func:`octtrain.runtime.backend.launch_xla`).
"""

from __future__ import annotations

import contextlib
import datetime
import pickle
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener, wait
from typing import Any

import torch
import torch.distributed as dist

from octtrain.callback import EpochCallback, EpochChannel, EpochDecision
from octtrain.config import EnvKnobs, RuntimeSection
from octtrain.errors import ConfigError, describe_exit
from octtrain.runtime.backend import CollectiveError, DeviceKind, Runtime, init_runtime, launch_xla, resolve_device

RankFn = Callable[[Runtime, EpochChannel], Any]


class RankFailed(RuntimeError):
    """A spawned rank failed: it raised (that exception is the ``__cause__``) or it died
    without a word (a signal, the OOM killer, ``os._exit``)."""

    def __init__(self, message: str, rank: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.rank = rank
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.rank, self.exitcode))


def launch(rank_fn: RankFn, cfg: RuntimeSection, on_epoch_end: EpochCallback | None,
           knobs: EnvKnobs | None = None) -> Any:
    """Run ``rank_fn(runtime, channel)`` on ``cfg.num_processes`` ranks; return rank 0's result.

    ``rank_fn`` must be picklable (a module-level function or a functools.partial of one), as
    ranks are new processes. An exception from ``on_epoch_end`` stops every rank at that epoch
    and is re-raised here; rank 0's own exception is re-raised here too; a rank that died is a
    :class:`RankFailed`. ``knobs`` (default: :class:`EnvKnobs` defaults) bound the waits.
    """
    knobs = knobs or EnvKnobs()
    kind = resolve_device(cfg.device)
    coordinator = _Coordinator(on_epoch_end)
    job = _Job(rank_fn, cfg, kind, cfg.num_processes, _free_port(), coordinator.address,
               coordinator.key, knobs.dist_timeout_s)
    exitcodes: dict[int, int | None] = {}
    stopped: set[int] = set()
    launch_error: BaseException | None = None
    try:
        if kind == "xla":
            try:
                launch_xla(_rank_entry, args=(job,))
            except Exception as err:  # a rank raised; its own report says which and why
                launch_error = err
        else:
            exitcodes, stopped = _spawn(job, knobs.rank_grace_s)
    finally:
        coordinator.close()
    return coordinator.outcome(exitcodes, stopped, launch_error)


@dataclass(frozen=True)
class _Job:
    """What every rank is started with (pickled into each rank process)."""

    rank_fn: RankFn
    cfg: RuntimeSection
    kind: DeviceKind
    world: int
    port: int  # of the gloo/nccl rendezvous (unused on XLA)
    address: Any  # of the coordinator's listener
    key: bytes  # its auth key
    dist_timeout_s: float


def _rank_entry(index: int, job: _Job) -> None:
    """Body of every launched rank. ``index`` comes first because that is how both
    ``torch_xla.launch`` (the global ordinal from PJRT) and our spawn call it."""
    conn = Client(job.address, authkey=job.key)  # first: even a failing set-up is reported
    runtime: Runtime | None = None
    try:
        init_process_group(job.kind, index, job.world, job.port, job.dist_timeout_s)
        runtime = init_runtime(job.cfg, rank=index, world_size=job.world)
        if runtime.world_size != job.world:
            raise ConfigError([("runtime.num_processes", (
                f"is {job.world} but torch_xla.launch started {runtime.world_size} ranks (it "
                "uses every local device; limit them with TPU_VISIBLE_CHIPS or CPU_NUM_DEVICES)"))])
        channel = EpochChannel(conn=conn) if runtime.is_master else EpochChannel()
        result = job.rank_fn(runtime, channel)
    except BaseException as err:  # report to the coordinator, then die non-zero
        rank = runtime.rank if runtime is not None else index
        with contextlib.suppress(OSError):
            conn.send(("error", rank, _pack_error(err), traceback.format_exc()))
        raise
    else:
        # Each host's first rank hands back its result (identical on every rank: metrics are
        # summed over ranks and the stop decision is broadcast); the others only say done.
        reporter = runtime.local_rank == 0
        conn.send(("done", runtime.rank, reporter, result if reporter else None))
    finally:
        conn.close()
        if runtime is not None:
            runtime.close()


def _spawn(job: _Job, grace_s: float) -> tuple[dict[int, int | None], set[int]]:
    """Start ``job.world`` ranks, wait for them; return their exit codes and the ranks we stopped.

    When a rank dies, its peers normally fail fast in their next collective (gloo notices
    the closed socket) and report; those still running ``grace_s`` later are stuck (e.g. in a
    collective that will only time out) and are terminated.
    """
    ctx = torch.multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_rank_entry, args=(r, job), name=f"octtrain-rank{r}", daemon=True)
             for r in range(job.world)]
    for p in procs:
        p.start()
    deadline: float | None = None
    stopped: set[int] = set()
    try:
        while True:
            running = [p for p in procs if p.exitcode is None]
            if not running:
                break
            if deadline is None and any(p.exitcode not in (None, 0) for p in procs):
                deadline = time.monotonic() + grace_s
            if deadline is not None and time.monotonic() >= deadline:
                break
            wait([p.sentinel for p in running], timeout=0.5)
    finally:
        for r, p in enumerate(procs):
            if p.is_alive():
                stopped.add(r)
                p.terminate()
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    return {r: p.exitcode for r, p in enumerate(procs)}, stopped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# The coordinator
# ---------------------------------------------------------------------------------------------


class _Coordinator:
    """The calling process's end of the ranks' sockets: runs the epoch callback for rank 0,
    collects each rank's result or failure, and decides what ``launch`` returns or raises."""

    def __init__(self, on_epoch_end: EpochCallback | None) -> None:
        self.key = secrets.token_bytes(16)
        self._listener = Listener(("127.0.0.1", 0), authkey=self.key, backlog=64)
        self.address = self._listener.address
        self._on_epoch_end = on_epoch_end
        self._lock = threading.Lock()
        self._closing = False
        self._handlers: list[threading.Thread] = []
        self.callback_error: BaseException | None = None
        self.errors: dict[int, tuple[BaseException, str]] = {}  # rank → (exception, traceback)
        self.result: Any = None
        self.has_result = False
        self._acceptor = threading.Thread(target=self._accept, name="octtrain-coordinator",
                                          daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except OSError:
                return
            except Exception:  # a stray client that failed authentication
                continue
            if self._closing:
                conn.close()
                return
            handler = threading.Thread(target=self._serve, args=(conn,), daemon=True,
                                       name="octtrain-coordinator-rank")
            with self._lock:
                self._handlers.append(handler)
            handler.start()

    def _serve(self, conn: Connection) -> None:
        with conn:
            while True:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    return
                if msg[0] == "epoch":
                    conn.send(self._decide(msg[1], msg[2]))
                elif msg[0] == "done":
                    _, _rank, reporter, result = msg
                    if reporter:
                        with self._lock:
                            self.result, self.has_result = result, True
                elif msg[0] == "error":
                    _, rank, blob, tb = msg
                    with self._lock:
                        self.errors[rank] = (_unpack_error(blob), tb)

    def _decide(self, epoch: int, metrics: dict[str, Any]) -> EpochDecision:
        try:
            if self._on_epoch_end is not None:
                self._on_epoch_end(epoch, metrics)
        except BaseException as err:  # the callback's verdict: stop every rank at this epoch
            self.callback_error = err
            return EpochDecision.STOP
        return EpochDecision.CONTINUE

    def close(self, timeout: float = 10.0) -> None:
        """Wait for the ranks' last messages (their processes have ended), stop listening."""
        deadline = time.monotonic() + timeout
        with self._lock:
            handlers = list(self._handlers)
        for handler in handlers:
            handler.join(max(0.0, deadline - time.monotonic()))
        self._closing = True
        with contextlib.suppress(OSError, EOFError):
            Client(self.address, authkey=self.key).close()  # wakes the blocking accept()
        self._acceptor.join(timeout=1.0)
        self._listener.close()

    def outcome(self, exitcodes: dict[int, int | None], stopped: set[int],
                launch_error: BaseException | None) -> Any:
        """Rank 0's result, or the exception that explains the run best.

        1. The callback's exception (the caller asked to stop; every rank ended cleanly).
        2. Rank 0's own exception (not a collective that lost a peer).
        3. The lowest rank that failed on its own or died silently: :class:`RankFailed`
           naming it and its exit code, caused by its exception if it reported one.
        4. A collective error (a peer vanished and nobody said why), else launch's own error.
        """
        if self.callback_error is not None:
            raise self.callback_error
        own = {r: e for r, e in self.errors.items() if not isinstance(e[0], CollectiveError)}
        if 0 in own:
            err, tb = own[0]
            raise err from RankFailed(_describe(0, exitcodes.get(0), tb), 0, exitcodes.get(0))
        silent = {r for r, code in exitcodes.items()
                  if code not in (0, None) and r not in self.errors and r not in stopped}
        culprits = sorted(set(own) | silent)
        if culprits:
            rank = culprits[0]
            cause, tb = own.get(rank, (None, ""))
            code = exitcodes.get(rank)
            raise RankFailed(_describe(rank, code, tb), rank, code) from cause
        if self.errors:
            rank = min(self.errors)
            err, tb = self.errors[rank]
            raise err from RankFailed(_describe(rank, exitcodes.get(rank), tb), rank)
        if launch_error is not None:
            raise launch_error
        if not self.has_result:
            code = exitcodes.get(0)
            raise RankFailed(_describe(0, code, "it ended without reporting a result"), 0, code)
        return self.result


def _describe(rank: int, exitcode: int | None, detail: str) -> str:
    return f"rank {rank} {describe_exit(exitcode)}" + (f":\n{detail}" if detail else "")


def _pack_error(err: BaseException) -> bytes:
    """``err`` as bytes that unpickle to the same type with the same attributes.

    Plain pickling calls ``type(err)(*err.args)`` on load, which fails for exceptions whose
    ``__init__`` takes other arguments than their message (``ConfigError(problems)``,
    ``DivergedError(epoch, loss)``); rebuilding from ``args`` and ``__dict__`` does not. An
    exception that cannot travel at all becomes a RuntimeError with its type and message.
    """
    try:
        blob = pickle.dumps((type(err), err.args, dict(vars(err))))
        _unpack_error(blob)
        return blob
    except Exception:
        return pickle.dumps((RuntimeError, (f"{type(err).__name__}: {err}",), {}))


def _unpack_error(blob: bytes) -> BaseException:
    cls, args, state = pickle.loads(blob)
    err: BaseException = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


def init_process_group(kind: DeviceKind, rank: int, world_size: int, port: int, timeout_s: float) -> None:
    """Join the ``torch.distributed`` group of a CPU (gloo) or CUDA (nccl) run on this host.

    XLA ranks need none: PJRT connects them. ``timeout_s`` bounds how long a collective waits
    for a peer that will never come (it died).
    """
    if kind == "xla":
        return
    backend = "nccl" if kind == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
