"""Encoder sizes by name (``model.encoder: tiny``, ``vitl-random``, ``vitg-random``): plain numbers,
read by the classifier that builds them and by the memory estimates that must not load torch.
"""

from __future__ import annotations

from typing import Any

# A random-init V-JEPA 2 small enough to train on two CPU cores in seconds per epoch
# (DESIGN.md, "Facts measured here"). Real runs pass a hub id or a save_pretrained directory.
TINY_ENCODER: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "patch_size": 16,
    "tubelet_size": 2,
    "mlp_ratio": 4.0,
    "pred_hidden_size": 32,
    "pred_num_hidden_layers": 1,
    "pred_num_attention_heads": 2,
    "num_pooler_layers": 1,
}

# Random-init encoders of the released V-JEPA 2 sizes, for benchmarks and shape tests without a
# hub. transformers' VJEPA2Config() defaults are facebook/vjepa2-vitl-fpc64-256 (ViT-L/16:
# hidden 1024, 24 layers, 16 heads, MLP ratio 4, tubelet 2: about 303 M encoder parameters);
# ViT-g/16 is facebook/vjepa2-vitg-fpc64-256's encoder (hidden 1408, 40 layers, 22 heads, MLP
# 6144 = 48/11 of the width: about 1.0 B).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": TINY_ENCODER,
    "vitl-random": {},
    "vitg-random": {"hidden_size": 1408, "num_hidden_layers": 40, "num_attention_heads": 22,
                    "mlp_ratio": 48 / 11},
}
