"""Which devices each trial slot of a worker gets: the environment of its trial processes.

A worker with ``--parallel N`` runs N trials at once, one per *slot*; slot ``i`` with K devices
per trial (``--devices-per-trial``, the trials' ``runtime.num_processes``) gets devices
``i*K .. i*K+K-1`` of those this worker may use, and its trial processes see only those:

- TPU: the PJRT topology variables of one process on its own chips
  (:func:`octtrain.runtime.topology.tpu_process_env`): ``TPU_VISIBLE_CHIPS``,
  ``TPU_CHIPS_PER_PROCESS_BOUNDS``, ``TPU_PROCESS_BOUNDS=1,1,1``, its own ``TPU_PROCESS_PORT``
  (8476 + its first chip, torch_xla's port of that chip) and mesh controller port
  (8576 + slot). A trial with ``num_processes: K`` starts one rank per chip of its slot
  (:func:`octtrain.runtime.backend.launch_xla`).
- CUDA: ``CUDA_VISIBLE_DEVICES``.
- CPU (and XLA on the CPU): a contiguous share of the cores this worker may use,
  ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` set to its size (torch's intra-op threads) and
  ``OCTSEARCH_CPU_CORES`` naming them; the trial process pins itself to them
  (:func:`pin_cpu_cores`, ``os.sched_setaffinity``).

"Devices this worker may use" respects an assignment already in the environment
(``TPU_VISIBLE_CHIPS``, ``CUDA_VISIBLE_DEVICES``, the CPU affinity), so a scheduler can hand a
worker part of a host. ``--parallel 1`` changes nothing in the trial's environment.

``--parallel auto``: one trial per K chips/GPUs found; on a CPU host, one trial (a CPU host is
not split unless asked: ``--parallel N`` gives each trial 1/N of the cores; bench/parallel.py
measures what that is worth).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from octtrain.runtime import TPU_BASE_PORT, TPU_MESH_BASE_PORT, parse_chips, tpu_process_env
from search.errors import OctsearchError

CPU_CORES_ENV = "OCTSEARCH_CPU_CORES"  # the cores a trial process pins itself to
SLOT_ENV = "OCTSEARCH_SLOT"  # the slot a trial process runs in (for its logs and tests)
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
KINDS = ("tpu", "cuda", "cpu")


@dataclass(frozen=True)
class Assignment:
    """One slot's devices and the environment its trial processes get."""

    slot: int
    kind: str  # tpu | cuda | cpu
    devices: tuple[int, ...]  # chip / GPU / core numbers as the host counts them
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How reports show it: ``tpu:2,3``, ``cuda:1``, ``cpu:0-7``."""
        devices = self.devices
        if len(devices) > 2 and list(devices) == list(range(devices[0], devices[-1] + 1)):
            return f"{self.kind}:{devices[0]}-{devices[-1]}"
        return f"{self.kind}:{','.join(str(d) for d in devices)}"


def _split(items: Sequence[int], parts: int, size: int | None) -> list[tuple[int, ...]]:
    """``parts`` contiguous groups: of ``size`` each, or (None) as even as they can be."""
    if size is not None:
        return [tuple(items[i * size:(i + 1) * size]) for i in range(parts)]
    base, extra = divmod(len(items), parts)
    groups, start = [], 0
    for i in range(parts):
        end = start + base + (i < extra)
        groups.append(tuple(items[start:end]))
        start = end
    return groups


def plan_slots(kind: str, available: Sequence[int], parallel: int,
               per_trial: int = 1) -> list[Assignment]:
    """The slots of a worker running ``parallel`` trials of ``per_trial`` devices each on the
    ``available`` devices of ``kind``; an OctsearchError when they do not fit."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, but got kind={kind!r}.")
    if parallel < 1 or per_trial < 1:
        raise OctsearchError(f"--parallel and --devices-per-trial must be at least 1, got "
                             f"{parallel} and {per_trial}")
    what = {"tpu": "TPU chips", "cuda": "CUDA devices", "cpu": "CPU cores"}[kind]
    need = parallel * (per_trial if kind != "cpu" else 1)
    if need > len(available):
        raise OctsearchError(f"--parallel {parallel} with {per_trial} device(s) per trial needs "
                             f"{need} {what}, but this worker has {len(available)} "
                             f"({','.join(map(str, available)) or 'none'})")
    if parallel == 1:
        return [Assignment(0, kind, tuple(available))]  # the whole host, as without --parallel
    groups = _split(available, parallel, None if kind == "cpu" else per_trial)
    return [Assignment(i, kind, group, _slot_env(kind, i, group))
            for i, group in enumerate(groups)]


def _slot_env(kind: str, slot: int, devices: tuple[int, ...]) -> dict[str, str]:
    env = {SLOT_ENV: str(slot)}
    if kind == "tpu":
        env.update(tpu_process_env(devices, port=TPU_BASE_PORT + devices[0],
                                   mesh_port=TPU_MESH_BASE_PORT + slot))
    elif kind == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    else:
        env[CPU_CORES_ENV] = ",".join(str(d) for d in devices)
        env.update({var: str(len(devices)) for var in THREAD_VARS})
    return env


def host_devices(setting: str) -> tuple[str, list[int]]:
    """What trials with ``runtime.device: setting`` run on here (``tpu``, ``cuda`` or ``cpu``;
    XLA on the CPU is ``cpu``) and the devices of it this worker may use."""
    from octtrain.runtime import local_device_count, resolve_device

    kind = resolve_device(setting)
    if kind == "xla" and os.environ.get("PJRT_DEVICE", "TPU").upper() == "TPU":
        chips = local_device_count("tpu")
        if chips:
            return "tpu", available_devices("tpu", chips)
    if kind == "cuda":
        return "cuda", available_devices("cuda", local_device_count("cuda"))
    return "cpu", available_devices("cpu", 0)


def available_devices(kind: str, count: int, env: Mapping[str, str] | None = None) -> list[int]:
    """The devices of ``kind`` this worker may use: those its own environment names
    (``TPU_VISIBLE_CHIPS``, ``CUDA_VISIBLE_DEVICES``), else ``0 .. count-1``; for the CPU,
    the cores of its affinity."""
    env = os.environ if env is None else env
    if kind == "cpu":
        return sorted(os.sched_getaffinity(0))
    var = "TPU_VISIBLE_CHIPS" if kind == "tpu" else "CUDA_VISIBLE_DEVICES"
    named = env.get(var, "").strip()
    if not named:
        return list(range(count))
    try:
        return parse_chips(named)
    except ValueError:
        raise OctsearchError(f"{var}={named!r} must be device numbers like '0,1'") from None


def parse_parallel(text: str) -> int | None:
    """``--parallel``: a number >= 1, or ``auto`` (None)."""
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise OctsearchError(f"--parallel must be a number of trials or 'auto', got {text!r}"
                             ) from None
    if value < 1:
        raise OctsearchError(f"--parallel must be at least 1, got {value}")
    return value


def auto_parallel(kind: str, available: Sequence[int], per_trial: int) -> int:
    """``--parallel auto``: one trial per ``per_trial`` chips/GPUs; one trial on a CPU host."""
    if kind == "cpu":
        return 1
    return max(1, len(available) // per_trial)


def pin_cpu_cores(env: Mapping[str, str] | None = None) -> None:
    """In a trial process: keep to the cores of its slot (``OCTSEARCH_CPU_CORES``), if any."""
    env = os.environ if env is None else env
    cores = env.get(CPU_CORES_ENV)
    if cores:
        os.sched_setaffinity(0, parse_chips(cores))
