"""The device layer, the only code that touches torch_xla: the ``Runtime`` and its collectives
(``backend``), which device a ``runtime:`` section resolves to (``devices``), TPU chip topology
(``topology``), the multi-process launcher (``launch``) and stop requests agreed by all ranks
(``preempt``).
"""

from __future__ import annotations

from octtrain.runtime.backend import Runtime, init_runtime, local_device_count
from octtrain.runtime.devices import resolve_device, xla_available
from octtrain.runtime.launch import launch
from octtrain.runtime.preempt import Preempted, agreed_stop, stop_on_signals, stop_requested
from octtrain.runtime.topology import TPU_BASE_PORT, TPU_MESH_BASE_PORT, parse_chips, tpu_process_env

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
