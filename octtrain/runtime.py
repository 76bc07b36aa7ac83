"""Every device specific of the trainer: XLA (TPU, or CPU-PJRT), CUDA, CPU; one or many processes.

This is the only module of ``octtrain`` that imports ``torch_xla`` (lazily, so CPU/CUDA users
need not install it). The loop talks to a :class:`Runtime` and never asks which device it is on.

Collectives follow one rule: every rank calls them, in the same order, outside any
master-only branch. On XLA there is no ``xm.broadcast_object``; objects travel with
``xm.mesh_reduce`` (an out-of-graph rendezvous) and tensors with ``xm.all_reduce``. Without
XLA the same logic runs on ``torch.distributed`` (gloo on CPU, nccl on CUDA), which is how the
multi-process logic is tested with real processes on a CPU-only machine.

Multi-process runs use a *coordinator*: the calling process spawns the ranks and keeps the
``on_epoch_end`` callback. Rank 0 sends each epoch's metrics to the coordinator over a local
socket, the coordinator runs the callback (for a search: ``trial.report`` / ``should_prune``)
and answers continue or stop; rank 0 then sends that decision to every rank, so all ranks
leave the loop at the same epoch and none hangs in a collective when a trial is pruned.
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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from octtrain.config import RuntimeConfig
from octtrain.errors import ConfigError


def xla_available() -> bool:
    """torch_xla is installed and a PJRT device is configured (PJRT_DEVICE, or a TPU is present)."""
    if importlib.util.find_spec("torch_xla") is None:
        return False
    return bool(os.environ.get("PJRT_DEVICE")) or Path("/dev/accel0").exists() or Path("/dev/vfio/0").exists()


def resolve_device(setting: str) -> str:
    """``auto`` → ``xla`` when torch_xla and a PJRT device are present, else ``cuda``, else ``cpu``."""
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


@dataclass
class Runtime:
    """One rank's view of the devices and of its peers."""

    kind: str  # xla | cuda | cpu
    device: torch.device
    rank: int = 0
    world_size: int = 1
    distributed: bool = False  # torch.distributed process group (gloo/nccl) is initialised

    @property
    def is_master(self) -> bool:
        """Global rank 0 (``xm.is_master_ordinal(local=False)`` semantics on multi-host TPU)."""
        return self.rank == 0

    # -- graph boundaries -------------------------------------------------------------------

    def sync(self) -> None:
        """Cut and launch the pending XLA graph (``torch_xla.sync()``); no-op elsewhere."""
        if self.kind == "xla":
            import torch_xla

            torch_xla.sync()

    def loader(self, data: Iterable[Any]) -> Iterator[Any]:
        """Batches on the device. On XLA ``MpDeviceLoader`` overlaps host→device transfer with
        compute and cuts a graph per batch; elsewhere tensors are moved here."""
        if self.kind == "xla":
            import torch_xla.distributed.parallel_loader as pl

            return iter(pl.MpDeviceLoader(data, self.device))
        non_blocking = self.kind == "cuda"
        return (
            tuple(t.to(self.device, non_blocking=non_blocking) for t in batch) for batch in data
        )

    # -- optimisation -----------------------------------------------------------------------

    def optimizer_step(self, optimizer: torch.optim.Optimizer, grad_clip: float) -> None:
        """Average gradients over ranks, clip the global norm, step.

        Same semantics on every backend (``xm.optimizer_step`` = reduce_gradients + step);
        clipping comes after the reduction so every rank clips the same averaged gradient.
        """
        if self.kind == "xla":
            import torch_xla.core.xla_model as xm

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

            return xm.all_reduce(xm.REDUCE_SUM, tensor)
        out = tensor.clone()
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
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self, tag: str) -> None:
        if self.world_size == 1:
            return
        if self.kind == "xla":
            import torch_xla.core.xla_model as xm

            xm.rendezvous(tag)
        else:
            dist.barrier()

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


def init_runtime(cfg: RuntimeConfig, rank: int = 0, world_size: int = 1) -> Runtime:
    """The runtime of this process. XLA reads rank and world size from PJRT itself."""
    kind = resolve_device(cfg.device)
    if kind == "xla":
        import torch_xla
        import torch_xla.runtime as xr

        if cfg.xla_cache_dir:
            # Must precede any computation; readonly for all but one process per host so that
            # concurrent writers do not corrupt the cache.
            with contextlib.suppress(AssertionError):  # already initialised in this process
                xr.initialize_cache(cfg.xla_cache_dir, readonly=xr.local_ordinal() != 0)
        return Runtime("xla", torch_xla.device(), xr.global_ordinal(), xr.world_size())
    if kind == "cuda":
        device = torch.device("cuda", rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return Runtime(kind, device, rank, world_size, distributed=dist.is_initialized())


# ---------------------------------------------------------------------------------------------
# Multi-process launch with a coordinator that owns the epoch callback
# ---------------------------------------------------------------------------------------------

EpochCallback = Callable[[int, dict[str, Any]], None]
Decision = tuple[str, str]  # ("continue" | "stop", why)


class EpochChannel:
    """Rank 0's link to the coordinator: ``decide(epoch, metrics)`` runs the callback there.

    In a single-process run the callback runs in place and its exception propagates as is.
    """

    def __init__(self, callback: EpochCallback | None = None, address: Any = None, key: bytes = b""):
        self._callback = callback
        self._conn: Connection | None = Client(address, authkey=key) if address else None

    def decide(self, epoch: int, metrics: dict[str, Any]) -> Decision:
        if self._conn is not None:
            self._conn.send(("epoch", epoch, metrics))
            reply: Decision = self._conn.recv()
            return reply
        if self._callback is not None:
            self._callback(epoch, metrics)
        return ("continue", "")

    def finish(self, kind: str, payload: Any) -> None:
        if self._conn is not None:
            self._conn.send((kind, payload))
            self._conn.close()


RankFn = Callable[[Runtime, EpochChannel], Any]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_entry(index: int, rank_fn: RankFn, cfg: RuntimeConfig, world: int, master_port: int,
                address: Any, key: bytes) -> None:
    """Body of every spawned rank (``index`` is the rank; on XLA PJRT assigns it)."""
    kind = resolve_device(cfg.device)
    if kind != "xla":
        backend = "nccl" if kind == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{master_port}", rank=index, world_size=world,
            timeout=datetime.timedelta(seconds=int(os.environ.get("OCTTRAIN_DIST_TIMEOUT_S", "300"))),
        )
    runtime = init_runtime(cfg, rank=index, world_size=world)
    channel = EpochChannel(address=address, key=key) if runtime.is_master else EpochChannel()
    try:
        result = rank_fn(runtime, channel)
    except BaseException as err:  # report to the coordinator, then die non-zero
        if runtime.is_master:
            channel.finish("error", (pickle.dumps(_picklable(err)), traceback.format_exc()))
        raise
    else:
        if runtime.is_master:
            channel.finish("done", result)
    finally:
        runtime.close()


def _picklable(err: BaseException) -> BaseException:
    try:
        pickle.dumps(err)
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


class RankFailed(RuntimeError):
    """A spawned rank died without reporting a result."""


def launch(rank_fn: RankFn, cfg: RuntimeConfig, on_epoch_end: EpochCallback | None) -> Any:
    """Run ``rank_fn(runtime, channel)`` on ``cfg.num_processes`` ranks; return rank 0's result.

    ``rank_fn`` must be picklable (a module-level function or a functools.partial of one).
    An exception from ``on_epoch_end`` stops every rank at that epoch and is re-raised here;
    an exception on rank 0 is re-raised here too.
    """
    world = cfg.num_processes
    key = secrets.token_bytes(16)
    listener = Listener(("127.0.0.1", 0), authkey=key)
    state: dict[str, Any] = {}

    def serve() -> None:
        try:
            conn = listener.accept()
        except OSError:
            return
        with conn:
            while True:
                try:
                    msg = conn.recv()
                except EOFError:
                    return
                if msg[0] == "epoch":
                    try:
                        if on_epoch_end is not None:
                            on_epoch_end(msg[1], msg[2])
                        conn.send(("continue", ""))
                    except BaseException as err:  # the callback's verdict: stop every rank
                        state["callback_error"] = err
                        conn.send(("stop", f"{type(err).__name__}: {err}"))
                elif msg[0] == "done":
                    state["result"] = msg[1]
                    return
                elif msg[0] == "error":
                    state["rank_error"] = msg[1]
                    return

    server = threading.Thread(target=serve, name="octtrain-coordinator", daemon=True)
    server.start()
    try:
        if resolve_device(cfg.device) == "xla":
            import torch_xla

            torch_xla.launch(_rank_entry, args=(rank_fn, cfg, world, 0, listener.address, key))
        else:
            _spawn(rank_fn, cfg, world, listener.address, key)
    finally:
        server.join(timeout=10)
        listener.close()
    if "callback_error" in state:
        raise state["callback_error"]
    if "rank_error" in state:
        blob, tb = state["rank_error"]
        raise pickle.loads(blob) from RankFailed(f"rank 0 failed:\n{tb}")
    if "result" not in state:
        raise RankFailed("rank 0 exited without a result")
    return state["result"]


def _spawn(rank_fn: RankFn, cfg: RuntimeConfig, world: int, address: Any, key: bytes) -> None:
    ctx = torch.multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=_rank_entry, args=(r, rank_fn, cfg, world, port, address, key),
                    name=f"octtrain-rank{r}", daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    try:
        # If any rank dies, the others would wait in a collective until the timeout: stop them.
        while any(p.is_alive() for p in procs):
            if any(p.exitcode not in (None, 0) for p in procs):
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join()
    failed = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    if failed and not any(p.exitcode == 0 for p in procs[:1]):
        # rank 0's own error (if it had one) was sent to the coordinator and wins over this.
        return
    if failed:
        raise RankFailed(f"ranks exited with errors: {failed}")
