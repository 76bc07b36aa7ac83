"""octtrain.model.memory: the memory estimate, and a run that cannot fit refused before it starts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from octtrain import ConfigError, TrainConfig, fit
from octtrain.model.memory import GIB, MemoryEstimate, check_fits, estimate_memory

Make = Callable[..., TrainConfig]

VITL_16x256 = {"model.encoder": "vitl-random", "data.frames": 16, "data.height": 256,
               "data.width": 256}


def test_the_estimate_follows_what_is_trained_kept_and_recomputed(small_config: Make) -> None:
    frozen = estimate_memory(small_config(**VITL_16x256), "bf16")
    trained = estimate_memory(small_config(**VITL_16x256, **{"model.unfreeze_at_epoch": 1}), "bf16")
    recomputed = estimate_memory(small_config(**VITL_16x256, **{"model.unfreeze_at_epoch": 1,
                                                                "model.gradient_checkpointing": True}),
                                 "bf16")
    fp32 = estimate_memory(small_config(**VITL_16x256, **{"model.unfreeze_at_epoch": 1}), "fp32")
    assert frozen.weights == fp32.weights == 4 * 303_885_312  # fp32 master weights
    assert trained.weights == 6 * 303_885_312  # + autocast's cached bf16 copies
    assert frozen.gradients == frozen.optimizer == 0  # a frozen encoder has no AdamW state
    assert trained.optimizer == 2 * trained.gradients == 8 * 303_885_312
    assert frozen.activations < recomputed.activations < trained.activations
    assert fp32.activations == 2 * trained.activations


def test_check_fits_refuses_with_the_estimate_and_passes_when_unknown() -> None:
    estimate = MemoryEstimate(weights=GIB, gradients=GIB, optimizer=2 * GIB, activations=4 * GIB)
    with pytest.raises(ConfigError, match=r"needs about 8\.0 GiB \(weights 1\.0, .*activations 4\.0\)"
                                          r".* has 2\.0 GiB free"):
        check_fits(estimate, 2 * GIB, "cuda")
    check_fits(estimate, 9 * GIB, "cuda")
    check_fits(estimate, None, "xla")  # the device does not say: nothing is refused


def test_a_run_that_cannot_fit_is_refused_before_reading_data(small_config: Make,
                                                              tmp_path: Path) -> None:
    """ViT-L trained at batch 64 of 64 × 256 × 256 in fp32 needs terabytes of activations."""
    cfg = small_config(**{**VITL_16x256, "data.frames": 64, "model.freeze_encoder": False,
                          "train.batch_size": 64, "runtime.precision": "fp32"})
    with pytest.raises(ConfigError, match="train.batch_size: this run needs about .* GiB"):
        fit(cfg, out_dir=tmp_path / "run", progress=False)
    assert not (tmp_path / "volume-cache").exists()  # no volume was read or preprocessed
