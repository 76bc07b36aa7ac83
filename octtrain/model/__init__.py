"""The model: the V-JEPA 2 encoder with its pooling and classification head (``classifier``) and the
device-memory estimate that refuses a config that cannot fit (``memory``).
"""

from __future__ import annotations

from octtrain.model.classifier import OctClassifier, build_model
from octtrain.model.memory import approx_encoder_parameters, check_fits, estimate_memory

__all__ = [
    "approx_encoder_parameters",
    "OctClassifier",
    "build_model",
    "check_fits",
    "estimate_memory",
]
