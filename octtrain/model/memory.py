"""How much device memory a config needs, estimated before anything is allocated, so that a
config that cannot fit is refused at start with the numbers instead of failing with an
out-of-memory error epochs later (when the encoder unfreezes).

The estimate covers the encoder, which dominates (the pooling and head are a few million
parameters at most): float32 weights (the master weights, also under bf16 autocast, which adds
a cached bfloat16 copy of each trained weight during the step); when the
encoder is trained in any epoch, its float32 gradients and AdamW's two float32 moments; and the
activations one micro-batch keeps for the backward pass. Per transformer layer that is about
``B·N·(17·D + 2·h·N)`` values (Korthikanti et al. 2022, "Reducing Activation Recomputation in
Large Transformer Models", without dropout masks: the 17·D term is the layer's linear and
norm inputs, the h·N term the attention scores and probabilities, which XLA materialises),
2 bytes each under bf16 and 4 under fp32. With activation checkpointing a layer keeps only its
input (``B·N·D``) and one layer's activations exist at a time during the recomputation. A frozen
encoder runs without autograd: one layer's activations at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from octtrain.config import TrainConfig
from octtrain.errors import ConfigError
from octtrain.model.presets import PRESETS

if TYPE_CHECKING:  # transformers is imported when a model is built: search workers never pay for it
    from transformers import VJEPA2Config

GIB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part of a run's peak device memory (see the module docstring)."""

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> str:
        parts = ", ".join(f"{name} {value / GIB:.1f}" for name, value in (
            ("weights", self.weights), ("gradients", self.gradients),
            ("optimizer", self.optimizer), ("activations", self.activations)))
        return f"about {self.total / GIB:.1f} GiB ({parts})"


# transformers' VJEPA2Config() defaults (ViT-L/16), for the estimate below that does without it
_DEFAULT_SIZE = {"hidden_size": 1024, "num_hidden_layers": 24, "mlp_ratio": 4.0}


def approx_encoder_parameters(name: str) -> int | None:
    """The encoder's parameters from its size alone, without importing transformers: each ViT
    layer holds about ``(4 + 2·mlp_ratio)·D²`` weights (attention's q, k, v and output; the MLP's
    two matrices), within 1 % for ViT-L and ViT-g. For a preset or a local ``save_pretrained``
    directory (its ``config.json``); None for a hub id (nothing to read without the hub)."""
    if name in PRESETS:
        size = {**_DEFAULT_SIZE, **PRESETS[name]}
    else:
        config = Path(name) / "config.json"
        try:
            size = {**_DEFAULT_SIZE, **json.loads(config.read_text())}
        except (OSError, ValueError):
            return None
    try:
        dim, layers, ratio = int(size["hidden_size"]), int(size["num_hidden_layers"]), float(size["mlp_ratio"])
    except (TypeError, ValueError):
        return None
    return int(layers * (4 + 2 * ratio) * dim * dim)


def parameter_count(config: VJEPA2Config) -> int:
    """Parameters of the V-JEPA 2 encoder of ``config`` (built on the meta device: no memory,
    no initialisation)."""
    import torch
    from transformers import VJEPA2Model

    with torch.device("meta"):
        encoder = VJEPA2Model(config).encoder
    return sum(p.numel() for p in encoder.parameters())


def estimate_memory(cfg: TrainConfig, precision: str) -> MemoryEstimate:
    """The peak device memory of training ``cfg`` in ``precision`` (``fp32`` | ``bf16``)."""
    from octtrain.model.classifier import encoder_config  # loads torch, which pre-flight does without

    config = encoder_config(cfg.model.encoder, cfg.data.frames, cfg.data.height)
    n_params = parameter_count(config)
    trained = cfg.model.encoder_trainable(cfg.train.epochs - 1)  # trained by the last epoch
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    frames, height, width = cfg.data.shape
    tokens = (frames // config.tubelet_size) * (height // patch) * (width // patch)
    batch, dim = cfg.train.batch_size, config.hidden_size
    value_bytes = 2 if precision == "bf16" else 4
    per_layer = batch * tokens * (17 * dim + 2 * config.num_attention_heads * tokens) * value_bytes
    if not trained:
        activations = per_layer
    elif cfg.model.gradient_checkpointing:
        activations = config.num_hidden_layers * batch * tokens * dim * value_bytes + per_layer
    else:
        activations = config.num_hidden_layers * per_layer
    # bf16: autocast caches a bf16 copy of each trained weight for the step (+0.6 GiB measured
    # on ViT-L); weights without gradients are cast per layer and not kept
    weights = (4 + (2 if precision == "bf16" and trained else 0)) * n_params
    return MemoryEstimate(weights=weights, gradients=4 * n_params if trained else 0,
                          optimizer=8 * n_params if trained else 0, activations=activations)


def check_fits(estimate: MemoryEstimate, available: int | None, device: str) -> None:
    """A ConfigError with the estimate when it exceeds ``available`` bytes (None: the device
    does not say, so nothing is refused)."""
    if available is None or estimate.total <= available:
        return
    raise ConfigError([("train.batch_size",
                        f"this run needs {estimate.describe()} but the {device} device has "
                        f"{available / GIB:.1f} GiB free: lower train.batch_size or data.frames/"
                        "height/width, set model.gradient_checkpointing: true, "
                        "runtime.precision: bf16, or keep the encoder frozen")])
