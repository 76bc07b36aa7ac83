"""The model: the V-JEPA 2 encoder with its pooling and classification head (``classifier``), encoder
sizes by name (``presets``) and the device-memory estimate that refuses a config that cannot fit
(``memory``).

``OctClassifier`` and ``build_model`` are imported on first use: a search worker's pre-flight
sizes checkpoints with :func:`approx_encoder_parameters` without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from octtrain.lazy import on_first_use
from octtrain.model.memory import approx_encoder_parameters, check_fits, estimate_memory

if TYPE_CHECKING:
    from octtrain.model.classifier import OctClassifier, build_model

__all__ = [
    "approx_encoder_parameters",
    "OctClassifier",
    "build_model",
    "check_fits",
    "estimate_memory",
]


__getattr__ = on_first_use(__name__, {"OctClassifier": "classifier", "build_model": "classifier"})
