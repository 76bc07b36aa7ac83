"""octtrain: fine-tune a V-JEPA 2 video encoder on 3D OCT volumes without single-class collapse.

``fit`` and ``FitResult`` are imported on first use, so tools that only read configs
(``octsearch trials``, space validation) do not pay for importing torch and transformers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from octtrain.callback import EpochCallback
from octtrain.config import TrainConfig, config_from_dict, load_config
from octtrain.errors import ConfigError, DataError, DivergedError, HostError, OcttrainError
from octtrain.lazy import on_first_use
from octtrain.runtime import Preempted

if TYPE_CHECKING:
    from octtrain.train import FitResult, fit

__all__ = [
    "ConfigError",
    "DataError",
    "DivergedError",
    "EpochCallback",
    "FitResult",
    "HostError",
    "OcttrainError",
    "Preempted",
    "TrainConfig",
    "config_from_dict",
    "fit",
    "load_config",
]


__getattr__ = on_first_use(__name__, {"fit": "train.loop", "FitResult": "train.loop"})
