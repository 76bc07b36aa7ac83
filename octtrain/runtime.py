"""Every device specific of the trainer: XLA (TPU, or CPU-PJRT), CUDA, CPU; one or many processes.

This is the only module of ``octtrain`` that imports ``torch_xla`` (lazily, so CPU/CUDA users
need not install it). The loop talks to a :class:`Runtime` and never asks which device it is on.

Collectives follow one rule: every rank calls them, in the same order, outside any
master-only branch. torch_xla has no object broadcast (``xm.broadcast_object`` does not
exist): objects travel with ``xm.mesh_reduce`` (a rendezvous every rank joins) and tensors
with ``xm.all_reduce``. Without XLA the same logic runs on ``torch.distributed`` (gloo on
CPU, nccl on CUDA), which is how the multi-process logic is tested with real processes on a
CPU-only machine.

XLA graphs stay fixed: batches keep one shape (the loop's job), and values that change every
step (the scheduled LR, AdamW's step count) are device data, never Python scalars traced into
the graph (see :func:`_lr_on_device`).

Multi-process runs use a *coordinator*: the calling process spawns the ranks and keeps the
``on_epoch_end`` callback. Rank 0 sends each epoch's metrics to the coordinator over a local
socket, the coordinator runs the callback (for a search: ``trial.report`` / ``should_prune``)
and answers continue or stop; rank 0 then sends that decision to every rank, so all ranks
leave the loop at the same epoch and none hangs in a collective when a trial is pruned. Every
rank also reports its own failure over that socket, so the coordinator can name the rank that
failed first instead of the peers that merely lost it.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import os
import pickle
import secrets
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener, wait
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from octtrain.callback import EpochCallback, EpochChannel, EpochDecision
from octtrain.config import RuntimeSection
from octtrain.errors import ConfigError, describe_exit


def xla_available() -> bool:
    """torch_xla is installed and a PJRT device is configured (PJRT_DEVICE, or a TPU is present)."""
    if importlib.util.find_spec("torch_xla") is None:
        return False
    tpu_present = Path("/dev/accel0").exists() or Path("/dev/vfio/0").exists()
    return bool(os.environ.get("PJRT_DEVICE")) or tpu_present


def resolve_device(setting: str) -> str:
    """``auto``: ``xla`` when torch_xla and a PJRT device are present, else ``cuda``, else
    ``cpu``. An explicit device that cannot work here is a ConfigError."""
    if setting == "auto":
        if xla_available():
            return "xla"
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "xla" and importlib.util.find_spec("torch_xla") is None:
        raise ConfigError([("runtime.device", "is 'xla' but torch_xla is not installed "
                            "(pip install 'octsearch[xla]')")])
    if setting == "cuda" and not torch.cuda.is_available():
        raise ConfigError([("runtime.device", "is 'cuda' but no CUDA device is available")])
    return setting


class CollectiveError(RuntimeError):
    """A collective failed on this rank: almost always because a peer rank died.

    Raised in place of the backend's error (gloo: "Connection closed by peer") so that the
    coordinator can tell a rank's own failure from the echo of another rank's death.
    """


class RankFailed(RuntimeError):
    """A spawned rank failed: it raised (that exception is the ``__cause__``) or it died
    without a word (a signal, the OOM killer, ``os._exit``)."""

    def __init__(self, message: str, rank: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.rank = rank
        self.exitcode = exitcode

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.rank, self.exitcode))


@dataclass
class Runtime:
    """One rank's view of the devices and of its peers."""

    kind: str  # xla | cuda | cpu
    device: torch.device
    rank: int = 0  # global rank
    world_size: int = 1
    local_rank: int = 0  # rank within this host (XLA: local ordinal)
    distributed: bool = False  # torch.distributed process group (gloo/nccl) is initialised

    @property
    def is_master(self) -> bool:
        """Global rank 0: ``xm.is_master_ordinal(local=False)`` semantics, so on a multi-host
        TPU slice exactly one process (host 0, device 0) is master, not one per host."""
        return self.rank == 0

    # -- graph boundaries -------------------------------------------------------------------

    def sync(self) -> None:
        """Cut and launch the pending XLA graph (``torch_xla.sync()``); no-op elsewhere."""
        if self.kind == "xla":
            import torch_xla

            torch_xla.sync()

    def loader(self, data: Iterable[Any]) -> Generator[Any, None, None]:
        """Batches of ``data`` on the device; ``close()`` it when leaving an epoch early.

        On XLA this is what ``pl.MpDeviceLoader`` does (a ``ParallelLoader`` for one device:
        background host→device transfer, a graph cut before each batch), except that we keep
        the ``ParallelLoader`` to close it: ``MpDeviceLoader`` closes it only when iterated
        again, so an epoch that stops before the end (leftover micro-batches, an exception)
        would leave its feeder threads, and any DataLoader workers, blocked on a full queue.
        """
        if self.kind == "xla":
            import torch_xla.distributed.parallel_loader as pl

            parallel = pl.ParallelLoader(data, [self.device])
            try:
                yield from parallel.per_device_loader(self.device)
            finally:
                parallel.close()
            return
        non_blocking = self.kind == "cuda"
        for batch in data:
            yield tuple(t.to(self.device, non_blocking=non_blocking) for t in batch)

    # -- optimisation -----------------------------------------------------------------------

    def optimizer_step(self, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
        """Average gradients over ranks, clip the global norm, step.

        Same semantics on every backend (``xm.optimizer_step`` = reduce_gradients + step);
        clipping comes after the reduction so every rank clips the same averaged gradient.
        Nothing here reads a device value on the host (clipping scales in-graph).
        """
        if self.kind == "xla":
            import torch_xla.core.xla_model as xm

            with _lr_on_device(optimizer, self.device):
                if grad_clip > 0:
                    xm.reduce_gradients(optimizer)
                    torch.nn.utils.clip_grad_norm_(_params(optimizer), grad_clip)
                    optimizer.step()
                else:
                    xm.optimizer_step(optimizer)
            return
        if self.distributed and self.world_size > 1:
            grads = [p.grad for p in _params(optimizer) if p.grad is not None]
            if grads:
                flat = torch.cat([g.reshape(-1) for g in grads])
                with self._collective("gradient all_reduce"):
                    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                flat /= self.world_size
                offset = 0
                for g in grads:
                    n = g.numel()
                    g.copy_(flat[offset : offset + n].view_as(g))
                    offset += n
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(_params(optimizer), grad_clip)
        optimizer.step()

    # -- collectives (call on every rank) ---------------------------------------------------

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over ranks (in-graph on XLA)."""
        if self.world_size == 1:
            return tensor
        if self.kind == "xla":
            import torch_xla.core.xla_model as xm

            reduced = xm.all_reduce(xm.REDUCE_SUM, tensor)
            assert isinstance(reduced, torch.Tensor)  # one tensor in, one out
            return reduced
        out = tensor.clone()
        with self._collective("all_reduce"):
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def broadcast_object(self, obj: Any, tag: str) -> Any:
        """Rank 0's ``obj`` on every rank. Every rank must call it (others pass anything)."""
        if self.world_size == 1:
            return obj
        if self.kind == "xla":
            import torch_xla.core.xla_model as xm

            # mesh_reduce hands reduce_fn the payloads of all ranks in ordinal order.
            return xm.mesh_reduce(tag, obj, lambda payloads: payloads[0])
        box = [obj if self.is_master else None]
        with self._collective(f"broadcast of {tag}"):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self, tag: str) -> None:
        if self.world_size == 1:
            return
        if self.kind == "xla":
            import torch_xla.core.xla_model as xm

            xm.rendezvous(tag)
        else:
            with self._collective(f"barrier {tag}"):
                dist.barrier()

    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except RuntimeError as err:  # gloo/nccl: peer closed the connection, or timed out
            raise CollectiveError(f"rank {self.rank}: {what} failed ({err}); "
                                  "another rank probably died") from err

    # -- introspection ----------------------------------------------------------------------

    def compile_count(self) -> int | None:
        """XLA graph compilations so far in this process (None off XLA)."""
        if self.kind != "xla":
            return None
        import torch_xla.debug.metrics as met

        data = met.metric_data("CompileTime")
        return int(data[0]) if data else 0

    def to_cpu(self, obj: Any) -> Any:
        """A nested structure with every tensor copied to the CPU (for checkpoints)."""
        if isinstance(obj, torch.Tensor):
            return obj.detach().to("cpu")
        if isinstance(obj, dict):
            return {k: self.to_cpu(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.to_cpu(v) for v in obj)
        return obj

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


@contextlib.contextmanager
def _lr_on_device(optimizer: torch.optim.Optimizer, device: torch.device) -> Iterator[None]:
    """During the step, every value that changes from step to step is device *data*.

    A Python float reaching an XLA op is traced as a scalar: a constant when it is 0 or ±1
    after rounding to the tensor's dtype, otherwise a graph input that torch_xla de-duplicates
    by value. Either way the graph depends on the values: with the scheduler's float LR and
    AdamW's host-side bias corrections, CPU-PJRT compiled new step graphs when
    ``1 - lr * weight_decay`` rounded to 1.0 in float32 late in the cosine decay, and (with
    ``XLA_NO_SPECIAL_SCALARS``) whenever two of those scalars happened to be equal.

    So the LRs the scheduler set (floats: it keeps its own bookkeeping) travel as one tensor,
    and ``capturable`` keeps AdamW's step count and bias corrections on the device. The only
    Python scalars left in the step (betas, eps, weight decay) are fixed for the whole run, so
    the step graph is the same from the second step on (the first creates AdamW's state; so
    does the first step after the encoder is unfrozen).
    """
    groups = [g for g in optimizer.param_groups if "capturable" in g]
    host_lrs = [g["lr"] for g in groups]
    device_lrs = torch.tensor(host_lrs, dtype=torch.float32).to(device)  # one transfer
    for i, group in enumerate(groups):
        group["capturable"] = True  # before the first step: the state's step lives on device
        group["lr"] = device_lrs[i]
    try:
        yield
    finally:
        for group, lr in zip(groups, host_lrs, strict=True):
            group["lr"] = lr


def init_runtime(cfg: RuntimeSection, rank: int = 0, world_size: int = 1) -> Runtime:
    """The runtime of this process. XLA reads rank and world size from PJRT itself."""
    kind = resolve_device(cfg.device)
    if kind == "xla":
        return _init_xla(cfg)
    if kind == "cuda":
        device = torch.device("cuda", rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return Runtime(kind, device, rank, world_size, local_rank=rank,
                   distributed=dist.is_initialized())


def _init_xla(cfg: RuntimeSection) -> Runtime:
    import torch_xla
    import torch_xla.runtime as xr

    if cfg.xla_cache_dir:
        _initialize_xla_cache(cfg.xla_cache_dir)
    return Runtime("xla", torch_xla.device(), rank=xr.global_ordinal(),
                   world_size=xr.world_size(), local_rank=xr.local_ordinal())


def _initialize_xla_cache(path: str) -> None:
    """Persistent compile cache: trials of the same shapes load executables instead of
    compiling. Must precede the first computation of the process (torch_xla asserts that).

    One writer per host: the process holding local ordinal 0 (a process may drive several
    devices, so the decision is per process, not per device); the others only read, so
    concurrent writers do not corrupt entries.
    """
    import torch_xla
    import torch_xla.runtime as xr

    Path(path).mkdir(parents=True, exist_ok=True)
    local_process = xr.local_ordinal() // max(1, xr.addressable_device_count())
    if torch_xla._XLAC._xla_computation_cache_is_initialized():
        # A second fit() in a process that already computed: the cache of the first stays.
        active = os.environ.get("XLA_PERSISTENT_CACHE_PATH")
        if active != path:
            warnings.warn(f"runtime.xla_cache_dir={path!r} ignored: this process already "
                          f"compiled with cache {active!r}", RuntimeWarning, stacklevel=3)
        return
    xr.initialize_cache(path, readonly=local_process != 0)


# ---------------------------------------------------------------------------------------------
# Multi-process launch with a coordinator that owns the epoch callback
# ---------------------------------------------------------------------------------------------

RankFn = Callable[[Runtime, EpochChannel], Any]


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_entry(index: int, rank_fn: RankFn, cfg: RuntimeSection, kind: str, world: int,
                master_port: int, address: Any, key: bytes) -> None:
    """Body of every launched rank. ``index`` comes first because that is how both
    ``torch_xla.launch`` (the global ordinal from PJRT) and our spawn call it."""
    conn = Client(address, authkey=key)  # first: even a failing set-up is reported
    runtime: Runtime | None = None
    try:
        if kind != "xla":
            backend = "nccl" if kind == "cuda" else "gloo"
            timeout_s = int(os.environ.get("OCTTRAIN_DIST_TIMEOUT_S", "300"))
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{master_port}",
                                    rank=index, world_size=world,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        runtime = init_runtime(cfg, rank=index, world_size=world)
        if runtime.world_size != world:
            raise ConfigError([("runtime.num_processes", (
                f"is {world} but torch_xla.launch started {runtime.world_size} ranks (it uses "
                "every local device; limit them with TPU_VISIBLE_CHIPS or CPU_NUM_DEVICES)"))])
        channel = EpochChannel(conn=conn) if runtime.is_master else EpochChannel()
        result = rank_fn(runtime, channel)
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


def launch(rank_fn: RankFn, cfg: RuntimeSection, on_epoch_end: EpochCallback | None) -> Any:
    """Run ``rank_fn(runtime, channel)`` on ``cfg.num_processes`` ranks; return rank 0's result.

    ``rank_fn`` must be picklable (a module-level function or a functools.partial of one), as
    ranks are new processes. XLA ranks come from ``torch_xla.launch`` (one per local device:
    PJRT assigns ordinals); CPU/CUDA ranks are spawned here and joined by ``torch.distributed``.
    An exception from ``on_epoch_end`` stops every rank at that epoch and is re-raised here;
    rank 0's own exception is re-raised here too; a rank that died is a :class:`RankFailed`.
    """
    kind = resolve_device(cfg.device)
    world = cfg.num_processes
    coordinator = _Coordinator(on_epoch_end)
    exitcodes: dict[int, int | None] = {}
    stopped: set[int] = set()
    launch_error: BaseException | None = None
    try:
        if kind == "xla":
            import torch_xla

            try:
                torch_xla.launch(_rank_entry, args=(rank_fn, cfg, kind, world, 0,
                                                    coordinator.address, coordinator.key))
            except Exception as err:  # a rank raised; its own report says which and why
                launch_error = err
        else:
            exitcodes, stopped = _spawn(rank_fn, cfg, kind, world, coordinator.address,
                                        coordinator.key)
    finally:
        coordinator.close()
    return coordinator.outcome(exitcodes, stopped, launch_error)


def _spawn(rank_fn: RankFn, cfg: RuntimeSection, kind: str, world: int, address: Any,
           key: bytes) -> tuple[dict[int, int | None], set[int]]:
    """Start ``world`` ranks, wait for them; return their exit codes and the ranks we stopped.

    When a rank dies, its peers normally fail fast in their next collective (gloo notices
    the closed socket) and report; those still running after ``OCTTRAIN_RANK_GRACE_S`` are
    stuck (e.g. in a collective that will only time out) and are terminated.
    """
    ctx = torch.multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=_rank_entry, args=(r, rank_fn, cfg, kind, world, port, address, key),
                    name=f"octtrain-rank{r}", daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    grace = float(os.environ.get("OCTTRAIN_RANK_GRACE_S", "10"))
    deadline: float | None = None
    stopped: set[int] = set()
    try:
        while True:
            running = [p for p in procs if p.exitcode is None]
            if not running:
                break
            if deadline is None and any(p.exitcode not in (None, 0) for p in procs):
                deadline = time.monotonic() + grace
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
