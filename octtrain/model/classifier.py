"""V-JEPA 2 encoder + pooling + classification head for OCT volumes.

Input is a batch of preprocessed grayscale volumes ``(B, T, H, W)`` in [0, 1], the B-scan
axis as the frame axis. The encoder is transformers' V-JEPA 2 video encoder; its predictor
(used only by the JEPA pre-training objective) is dropped so it costs neither memory nor
optimizer state. The structure is decided in ``__init__`` (pooling and head are modules chosen
by the config), so ``forward`` is branch-free and traces to one static XLA graph.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from octtrain.config import ModelSection
from octtrain.errors import ConfigError
from octtrain.model.presets import PRESETS

if TYPE_CHECKING:  # transformers is imported when a model is built: search workers never pay for it
    from transformers import VJEPA2Config

# V-JEPA 2 was pre-trained on ImageNet-normalised RGB video.
_RGB_MEAN = (0.485, 0.456, 0.406)
_RGB_STD = (0.229, 0.224, 0.225)


def encoder_config(name: str, frames: int, size: int) -> VJEPA2Config:
    """The encoder's config with ``crop_size`` set to the input size (RoPE's grid uses it)."""
    from transformers import VJEPA2Config

    if name in PRESETS:
        return VJEPA2Config(**PRESETS[name], crop_size=size, frames_per_clip=frames)
    try:
        return VJEPA2Config.from_pretrained(name, crop_size=size, frames_per_clip=frames)
    except OSError as err:
        raise ConfigError([("model.encoder", f"cannot load V-JEPA 2 config {name!r}: {err}")]) from None


def load_encoder(name: str, frames: int, height: int, width: int, *,
                 checkpointing: Callable[..., Any] | None = None) -> nn.Module:
    """The V-JEPA 2 encoder (no predictor) for ``(B, T, 3, H, W)`` clips of this size.

    ``checkpointing``: recompute each encoder layer's activations in the backward pass
    (transformers' activation checkpointing) with this checkpoint function (the device's:
    see :meth:`octtrain.runtime.backend.Runtime.checkpoint_function`); None: keep the activations."""
    from transformers import VJEPA2Model

    if height != width:
        raise ConfigError(
            [("data.height", f"V-JEPA 2 needs square B-scans (height == width), got {height} x {width}")]
        )
    config = encoder_config(name, frames, height)
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    problems = []
    if height % patch:
        problems.append(("data.height", f"must be a multiple of the patch size {patch}, got {height}"))
    if frames % config.tubelet_size:
        problems.append(("data.frames", f"must be a multiple of the tubelet size {config.tubelet_size}, got {frames}"))
    if problems:
        raise ConfigError(problems)
    if name in PRESETS:
        full = VJEPA2Model(config)
    else:
        try:
            full = VJEPA2Model.from_pretrained(name, config=config)
        except OSError as err:
            raise ConfigError([("model.encoder", f"cannot load V-JEPA 2 weights {name!r}: {err}")]) from None
    if checkpointing is not None:
        full.activation_checkpointing_enable()  # sets every layer's flag (non-reentrant default)
        for module in full.modules():  # the device's checkpoint function replaces torch's
            if hasattr(module, "_gradient_checkpointing_func"):
                setattr(module, "_gradient_checkpointing_func", checkpointing)  # noqa: B010
    return full.encoder


class MeanPool(nn.Module):
    """Average of the patch tokens: ``(B, N, D) -> (B, D)``."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)


class AttentivePool(nn.Module):
    """One learned query cross-attends to the patch tokens (V-JEPA 2's attentive probe):
    ``(B, N, D) -> (B, D)``, followed by a residual MLP as in the probe's cross-attention block."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_kv = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        kv = self.norm_kv(tokens)  # (B, N, D)
        q = self.query.expand(tokens.shape[0], -1, -1)  # (B, 1, D)
        pooled, _ = self.attn(q, kv, kv, need_weights=False)  # (B, 1, D)
        pooled = pooled + self.mlp(self.norm_mlp(pooled))
        return pooled.squeeze(1)  # (B, D)


def make_head(in_features: int, num_classes: int, hidden: int, dropout: float) -> nn.Module:
    """``hidden == 0``: a linear probe. ``hidden > 0``: Linear → GELU → Dropout → Linear."""
    if hidden == 0:
        return nn.Linear(in_features, num_classes)
    return nn.Sequential(
        nn.Linear(in_features, hidden),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )


class OctClassifier(nn.Module):
    """Encoder → pool → head. ``set_encoder_trainable`` implements freeze / unfreeze."""

    rgb_mean: torch.Tensor
    rgb_std: torch.Tensor

    def __init__(self, encoder: nn.Module, cfg: ModelSection, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        enc_cfg: Any = encoder.config
        self.embed_dim: int = enc_cfg.hidden_size
        self.num_classes = num_classes
        self.pool: nn.Module = (
            AttentivePool(self.embed_dim, enc_cfg.num_attention_heads)
            if cfg.pool_method == "attentive"
            else MeanPool()
        )
        self.head = make_head(self.embed_dim, num_classes, cfg.head.hidden, cfg.head.dropout)
        self.register_buffer("rgb_mean", torch.tensor(_RGB_MEAN).view(1, 1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(_RGB_STD).view(1, 1, 3, 1, 1), persistent=False)
        self.encoder_trainable = True
        self.set_encoder_trainable(not cfg.freeze_encoder)

    def set_encoder_trainable(self, trainable: bool) -> None:
        """Frozen: no encoder gradients (``requires_grad=False``) and no autograd graph through
        it, which also saves the activation memory of the whole backbone."""
        self.encoder_trainable = trainable
        for p in self.encoder.parameters():
            p.requires_grad_(trainable)

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        return self.encoder.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        yield from self.pool.parameters()
        yield from self.head.parameters()

    def features(self, volumes: torch.Tensor) -> torch.Tensor:
        """``(B, T, H, W)`` in [0, 1] → pooled features ``(B, D)``."""
        x = volumes.unsqueeze(2).expand(-1, -1, 3, -1, -1)  # (B, T, 3, H, W): gray → RGB
        x = (x - self.rgb_mean) / self.rgb_std
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.encoder_trainable):
            tokens = self.encoder(pixel_values_videos=x).last_hidden_state  # (B, N, D)
        return self.pool(tokens)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(volumes))  # (B, C) logits


def build_model(cfg: ModelSection, frames: int, height: int, width: int, num_classes: int,
                checkpoint_function: Callable[..., Any] | None = None) -> OctClassifier:
    """The classifier; with ``cfg.gradient_checkpointing``, its encoder recomputes activations
    with ``checkpoint_function`` (default: ``torch.utils.checkpoint.checkpoint``)."""
    checkpointing = None
    if cfg.gradient_checkpointing:
        checkpointing = checkpoint_function or functools.partial(checkpoint, use_reentrant=False)
    encoder = load_encoder(cfg.encoder, frames, height, width, checkpointing=checkpointing)
    return OctClassifier(encoder, cfg, num_classes)
