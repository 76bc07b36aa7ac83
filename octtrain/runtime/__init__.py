"""The device layer, the only code that touches torch_xla: the ``Runtime`` and its collectives
(``backend``), which device a ``runtime:`` section resolves to (``devices``), TPU chip topology
(``topology``), the multi-process launcher (``launcher``) and stop requests agreed by all ranks
(``preempt``).

``Runtime``, ``init_runtime`` and ``launch`` are imported on first use, and ``devices`` imports
torch only for the answers that need it: the processes that import this package for its stop
signals, topology and device names alone (an ``octsearch`` worker placing CPU trials, a trial
process, ``octsearch trials``) do not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from octtrain.lazy import on_first_use
from octtrain.runtime.devices import local_device_count, resolve_device, xla_available
from octtrain.runtime.preempt import Preempted, agreed_stop, stop_on_signals, stop_requested
from octtrain.runtime.topology import TPU_BASE_PORT, TPU_MESH_BASE_PORT, parse_chips, tpu_process_env

if TYPE_CHECKING:
    from octtrain.runtime.backend import Runtime, init_runtime
    from octtrain.runtime.launcher import launch

__all__ = [
    "Preempted",
    "Runtime",
    "TPU_BASE_PORT",
    "TPU_MESH_BASE_PORT",
    "agreed_stop",
    "init_runtime",
    "launch",
    "local_device_count",
    "parse_chips",
    "resolve_device",
    "stop_on_signals",
    "stop_requested",
    "tpu_process_env",
    "xla_available",
]

__getattr__ = on_first_use(__name__, {"Runtime": "backend", "init_runtime": "backend", "launch": "launcher"})
