"""Checkpoints hold only what changes: the head always, the encoder once it was trained."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from octtrain import fit
from octtrain.config.train_config import TrainConfig
from octtrain.train.checkpoint import load_checkpoint
from octtrain.train.evaluate import evaluate_checkpoint


@pytest.mark.parametrize("frozen", [True, False])
def test_checkpoint_holds_the_encoder_only_when_trained_and_reloads_to_the_same_predictions(
    small_config: Callable[..., TrainConfig], tmp_path: Path, frozen: bool,
) -> None:
    cfg = small_config(**{"train.epochs": 1, "model.freeze_encoder": frozen})
    result = fit(cfg, out_dir=tmp_path / "run", progress=False)
    state = load_checkpoint(result.out_dir / "best.pt")
    encoder_keys = [k for k in state["model"] if k.startswith("encoder.")]
    assert state["encoder_saved"] is (not frozen)
    assert bool(encoder_keys) is (not frozen)
    assert any(not k.startswith("encoder.") for k in state["model"])  # the head is always there
    assert "optimizer" not in state and "optimizer" in load_checkpoint(result.out_dir / "last.pt")
    # Rebuilt (and for a frozen run, its encoder re-initialised from the seed), the model
    # predicts the validation split exactly as the run did at that epoch.
    val = evaluate_checkpoint(result.out_dir / "best.pt", "val")
    assert val["val/loss"] == pytest.approx(state["metrics"]["val/loss"], rel=1e-5, abs=1e-6)
    assert val["val/accuracy"] == state["metrics"]["val/accuracy"]
