"""Every device specific of the trainer: XLA (TPU, or CPU-PJRT), CUDA, CPU, and their collectives.

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

Starting the ranks of a multi-process run is :mod:`octtrain.runtime.launcher`'s job; what is specific to a
device there (``torch_xla.launch``, joining a gloo/nccl group) is here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import random
import warnings
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist

from octtrain.config import RuntimeSection
from octtrain.runtime.devices import DeviceKind, Precision, resolve_device, resolve_precision
from octtrain.runtime.topology import TPU_BASE_PORT, parse_chips, tpu_rank_env


class CollectiveError(RuntimeError):
    """A collective failed on this rank: almost always because a peer rank died.

    Raised in place of the backend's error (gloo: "Connection closed by peer") so that the
    coordinator can tell a rank's own failure from the echo of another rank's death.
    """


@dataclass
class Runtime:
    """One rank's view of the devices and of its peers."""

    kind: DeviceKind
    device: torch.device
    rank: int = 0  # global rank
    world_size: int = 1
    local_rank: int = 0  # rank within this host (XLA: local ordinal)
    distributed: bool = False  # torch.distributed process group (gloo/nccl) is initialised
    precision: Precision = "fp32"  # bf16: the forward pass runs under torch.autocast

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's precision: ``torch.autocast`` to bfloat16 (``bf16``), or nothing.
        Autocast casts per op: parameters, gradients and AdamW's state stay float32; the caller
        computes the loss from ``logits.float()``. On XLA the casts are fixed parts of the graph
        (no graph is added: ``tests/octtrain/test_xla.py``)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @property
    def is_master(self) -> bool:
        """Global rank 0: ``xm.is_master_ordinal(local=False)`` semantics, so on a multi-host
        TPU slice exactly one process (host 0, device 0) is master, not one per host."""
        return self.rank == 0

    def seed(self, seed: int, *, per_rank: bool = False) -> None:
        """Seed Python's, NumPy's and torch's generators of this process: with ``seed`` itself
        (identical on every rank: identical initial weights), or with ``per_rank`` a seed of
        its own (``seed + 1000 * rank``: augmentation differs between ranks)."""
        value = seed + 1000 * self.rank if per_rank else seed
        random.seed(value)
        np.random.seed(value % 2**32)
        torch.manual_seed(value)

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

    def all_gather_object(self, obj: Any, tag: str) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank. Every rank must call it."""
        if self.world_size == 1:
            return [obj]
        if self.kind == "xla":
            import torch_xla.core.xla_model as xm

            gathered = xm.mesh_reduce(tag, obj, list)  # the payloads, in ordinal order
            return list(cast("list[Any]", gathered))
        out: list[Any] = [None] * self.world_size
        with self._collective(f"all_gather of {tag}"):
            dist.all_gather_object(out, obj)
        return out

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

    def compile_seconds(self) -> float | None:
        """XLA compile time so far in this process, in seconds (None off XLA)."""
        if self.kind != "xla":
            return None
        import torch_xla.debug.metrics as met

        data = met.metric_data("CompileTime")  # (count, total ns, samples)
        return float(data[1]) / 1e9 if data else 0.0

    def memory_available(self) -> int | None:
        """Bytes still free on the device: CUDA's free memory, XLA's limit minus use (None where
        PJRT does not say, as on CPU-PJRT), the host's available RAM on CPU."""
        if self.kind == "cuda":
            return int(torch.cuda.mem_get_info(self.device)[0])
        if self.kind == "xla":
            import torch_xla.core.xla_model as xm

            with contextlib.suppress(RuntimeError, KeyError, TypeError):
                info = xm.get_memory_info(self.device)
                return int(info["bytes_limit"]) - int(info["bytes_used"])
            return None
        with contextlib.suppress(OSError, ValueError, StopIteration):  # Linux: counts page cache
            meminfo = Path("/proc/meminfo").read_text().splitlines()
            return 1024 * int(next(ln for ln in meminfo if ln.startswith("MemAvailable:")).split()[1])
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))

    def checkpoint_function(self) -> Callable[..., Any]:
        """Activation checkpointing: on XLA torch_xla's (an optimisation barrier keeps the compiler
        from merging the recomputation into the forward), else torch's (non-reentrant)."""
        if self.kind == "xla":
            from torch_xla.utils.checkpoint import checkpoint as xla_checkpoint

            return cast("Callable[..., Any]", xla_checkpoint)
        from torch.utils.checkpoint import checkpoint

        return functools.partial(checkpoint, use_reentrant=False)

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
    precision = resolve_precision(cfg.precision, kind)
    if kind == "xla":
        return dataclasses.replace(_init_xla(cfg), precision=precision)
    if kind == "cuda":
        device = torch.device("cuda", rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return Runtime(kind, device, rank, world_size, local_rank=rank,
                   distributed=dist.is_initialized(), precision=precision)


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


def launch_xla(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    """Run ``fn(ordinal, *args)`` in one process per local XLA device (``torch_xla.launch``);
    returns when all have ended, raises if one raised. Given some chips (``TPU_VISIBLE_CHIPS=2,3``:
    a ``--parallel`` slot), one rank per chip of those (:func:`octtrain.runtime.topology.tpu_rank_env`)."""
    import torch_xla
    chips = os.environ.get("TPU_VISIBLE_CHIPS", "")
    if "," not in chips:
        torch_xla.launch(fn, args=args)
        return
    visible = parse_chips(chips)
    base_port = int(os.environ.get("TPU_PROCESS_PORT", TPU_BASE_PORT + visible[0]))
    torch.multiprocessing.start_processes(
        _xla_rank_on_chips, args=(visible, base_port, fn, args), nprocs=len(visible),
        join=True, start_method="spawn")


def _xla_rank_on_chips(index: int, chips: list[int], base_port: int, fn: Callable[..., Any],
                       args: tuple[Any, ...]) -> None:
    """One rank of :func:`launch_xla` on given chips: its topology set before PJRT starts,
    then what ``torch_xla.launch`` does in each process (``initialize_multiprocess``)."""
    os.environ.update(tpu_rank_env(chips, index, base_port=base_port))
    import torch_xla.runtime as xr
    from torch_xla._internal import pjrt
    pjrt.initialize_multiprocess(index, len(chips))
    fn(xr.global_ordinal(), *args)


def tpu_chip_count() -> int:
    """TPU chips on this host's PCI bus: torch_xla's count, no runtime started (torch_xla must be
    installed; :func:`octtrain.runtime.devices.local_device_count` asks)."""
    from torch_xla._internal import tpu

    return int(tpu.num_available_chips())
