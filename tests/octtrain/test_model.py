from __future__ import annotations

import pytest
import torch

from octtrain.config.sections import HeadSection, ModelSection
from octtrain.errors import ConfigError
from octtrain.model.classifier import AttentivePool, MeanPool, build_model, encoder_config, make_head
from octtrain.model.memory import parameter_count


@pytest.mark.parametrize(
    ("hidden", "n_linear"),
    [(0, 1), (256, 2)],
)
def test_head_shapes(hidden: int, n_linear: int) -> None:
    head = make_head(64, 4, hidden, 0.2)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == n_linear
    assert head(torch.zeros(3, 64)).shape == (3, 4)
    if hidden:
        assert linears[0].out_features == hidden
        kinds = [type(m).__name__ for m in head]
        assert kinds == ["Linear", "GELU", "Dropout", "Linear"] and head[2].p == 0.2


@pytest.mark.parametrize("pool", ["mean", "attentive"])
def test_forward_shapes(pool: str) -> None:
    model = build_model(ModelSection(pool_method=pool, head=HeadSection(128, 0.1)), 16, 64, 64, 4)
    assert isinstance(model.pool, AttentivePool if pool == "attentive" else MeanPool)
    assert model.encoder.config.crop_size == 64  # RoPE grid follows the input size
    out = model(torch.rand(2, 16, 64, 64))
    assert out.shape == (2, 4)
    assert model.features(torch.rand(1, 16, 64, 64)).shape == (1, model.embed_dim)


def test_frozen_encoder_gets_no_grad_and_unfrozen_does() -> None:
    model = build_model(ModelSection(freeze_encoder=True, unfreeze_at_epoch=1), 4, 32, 32, 4)
    model(torch.rand(2, 4, 32, 32)).sum().backward()
    assert all(p.grad is None for p in model.encoder_parameters())
    assert all(p.grad is not None for p in model.head_parameters())
    model.set_encoder_trainable(True)
    model(torch.rand(2, 4, 32, 32)).sum().backward()
    assert all(p.grad is not None for p in model.encoder_parameters())


def test_predictor_is_not_part_of_the_model() -> None:
    model = build_model(ModelSection(), 4, 32, 32, 4)
    assert not any("predictor" in name for name, _ in model.named_parameters())


@pytest.mark.parametrize(
    ("shape", "key"),
    [((16, 64, 48), "data.height"), ((16, 40, 40), "data.height"), ((15, 64, 64), "data.frames")],
)
def test_shape_errors_name_the_key(shape: tuple[int, int, int], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build_model(ModelSection(), *shape, 4)


def test_unknown_encoder_directory() -> None:
    with pytest.raises(ConfigError, match="model.encoder"):
        build_model(ModelSection(encoder="/nonexistent/vjepa2"), 16, 64, 64, 4)


@pytest.mark.parametrize(("name", "width", "layers", "heads", "params"), [
    ("vitl-random", 1024, 24, 16, 303_885_312),  # facebook/vjepa2-vitl-fpc64-256's encoder
    ("vitg-random", 1408, 40, 22, 1_012_173_952),  # facebook/vjepa2-vitg-fpc64-256's encoder
])
def test_real_size_presets_have_the_released_architecture(name: str, width: int, layers: int,
                                                         heads: int, params: int) -> None:
    config = encoder_config(name, 16, 256)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (width, layers, heads)
    assert (config.patch_size, config.tubelet_size, config.crop_size) == (16, 2, 256)
    assert parameter_count(config) == params


def test_vitl_random_runs_a_training_step_at_a_small_input_on_the_meta_device() -> None:
    """The whole ViT-L (activation checkpointing on) forward and backward, shapes only: the
    meta device allocates nothing, so the exact architecture is checked in seconds."""
    with torch.device("meta"):
        model = build_model(ModelSection(encoder="vitl-random", freeze_encoder=False,
                                         gradient_checkpointing=True), 4, 32, 32, 4)
        logits = model(torch.rand(2, 4, 32, 32))  # (B, C)
        logits.sum().backward()
    assert logits.shape == (2, 4)
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())
    assert all(layer.gradient_checkpointing for layer in model.encoder.layer)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    """Recomputing the activations in the backward pass changes memory, not the result."""
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelSection(freeze_encoder=False, gradient_checkpointing=checkpointing),
                            4, 32, 32, 4)
        model.train()
        loss = torch.nn.functional.cross_entropy(model(torch.rand(2, 4, 32, 32)), torch.tensor([0, 3]))
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])  # type: ignore[union-attr]
        assert all(layer.gradient_checkpointing is checkpointing for layer in model.encoder.layer)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads, strict=True))
