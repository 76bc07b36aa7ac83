"""The training loop through its public entry point, on a small phantom set (CPU)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from octtrain import ConfigError, DivergedError, TrainConfig, fit
from octtrain.config.train_config import config_from_dict
from octtrain.model.classifier import build_model
from octtrain.tracking.tracker import read_metrics
from octtrain.train.checkpoint import load_checkpoint

Make = Callable[..., TrainConfig]


def _encoder_state(path: Path) -> dict[str, torch.Tensor]:
    model = load_checkpoint(path)["model"]
    return {k: v.clone() for k, v in model.items() if k.startswith("encoder.")}


def test_encoder_frozen_until_unfreeze_epoch(small_config: Make, tmp_path: Path) -> None:
    cfg = small_config(**{"train.epochs": 3, "model.unfreeze_at_epoch": 1, "train.lr_encoder": 1e-3})
    snapshots: list[dict[str, torch.Tensor]] = []
    flags: list[bool] = []

    def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
        snapshots.append(_encoder_state(tmp_path / "run" / "last.pt"))
        flags.append(metrics["encoder_trainable"])

    fit(cfg, out_dir=tmp_path / "run", on_epoch_end=on_epoch_end, progress=False)
    assert flags == [False, True, True]
    # Epoch 0 (frozen) leaves the encoder exactly as initialised by the seed, so its checkpoint
    # leaves it out (checkpoint.py); epoch 1 moves it, and from then on it is saved.
    torch.manual_seed(cfg.train.seed)
    from octtrain.model.classifier import build_model

    init = {f"encoder.{k}": v for k, v in build_model(cfg.model, *cfg.data.shape, 4).encoder.state_dict().items()}
    assert snapshots[0] == {}
    changed = [k for k in init if not torch.equal(snapshots[1][k], init[k])]
    assert len(changed) == len(init)


def test_callback_exception_propagates_and_run_dir_is_complete(small_config: Make, tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    seen: list[int] = []

    def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
        seen.append(epoch)
        assert 0.0 <= metrics["val/balanced_accuracy"] <= 1.0
        assert sum(metrics["val/pred_hist"]) == metrics["val/count"] == sum(map(sum, metrics["val/confusion"]))
        if epoch == 1:
            raise Stop("pruned")

    with pytest.raises(Stop, match="pruned"):
        fit(small_config(**{"train.epochs": 4}), out_dir=tmp_path / "run", on_epoch_end=on_epoch_end,
            progress=False)
    assert seen == [0, 1]
    run = tmp_path / "run"
    expected = {"config.yaml", "class_to_idx.json", "metrics.jsonl", "best.pt", "last.pt"}
    assert {p.name for p in run.iterdir()} >= expected
    # Train metrics are written before validation of the same epoch.
    phases = [json.loads(line)["phase"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert phases == ["train", "epoch", "train", "epoch"]


def test_checkpoint_describes_itself(small_config: Make, tmp_path: Path) -> None:
    cfg = small_config(**{"train.epochs": 2})
    result = fit(cfg, out_dir=tmp_path / "run", progress=False)
    ckpt = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert ckpt["epoch"] == result.best_epoch
    assert ckpt["best_value"] == pytest.approx(result.best_value)
    assert ckpt["best_metric"] == "balanced_accuracy"
    assert config_from_dict(ckpt["config"]) == cfg
    assert ckpt["class_to_idx"] == result.class_to_idx
    assert {"model", "scheduler"} <= set(ckpt) and "optimizer" not in ckpt  # weights, for evaluation
    last = load_checkpoint(tmp_path / "run" / "last.pt")
    assert last["epoch"] == 1 and "optimizer" in last
    assert last["scheduler"]["last_epoch"] > 0


def test_early_stopping_on_a_flat_metric(small_config: Make, tmp_path: Path) -> None:
    """A head that cannot move keeps the metric flat: stop after `patience` epochs."""
    cfg = small_config(**{"train.epochs": 6, "train.lr_head": 1e-12,
                          "train.early_stopping": {"enabled": True, "patience": 2, "metric": "balanced_accuracy",
                                                   "mode": "max", "min_delta": 0.001}})
    result = fit(cfg, out_dir=tmp_path / "run", progress=False)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 0
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 3


def test_nan_loss_raises_diverged(small_config: Make, tmp_path: Path) -> None:
    with pytest.raises(DivergedError, match="training diverged: loss is nan in epoch 0") as info:
        fit(small_config(**{"train.lr_head": 1e30, "train.warmup_epochs": 0}), out_dir=tmp_path / "run",
            progress=False)
    assert info.value.epoch == 0


def test_accumulation_larger_than_an_epoch_is_a_config_error(small_config: Make, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.grad_accum_steps: 64 micro-batches per step"):
        fit(small_config(**{"train.grad_accum_steps": 64}), out_dir=tmp_path / "run", progress=False)


def test_metrics_history_matches_jsonl(small_config: Make, tmp_path: Path) -> None:
    result = fit(small_config(**{"train.epochs": 2}), out_dir=tmp_path / "run", progress=False)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1]
    for rec, hist in zip(records, result.history, strict=True):
        assert rec["val/confusion"] == hist["val/confusion"]
        assert rec["val/balanced_accuracy"] == pytest.approx(hist["val/balanced_accuracy"])
        assert rec["io/load_s"] >= 0 and rec["train/compute_s"] > 0


def test_bf16_on_cpu_trains_close_to_fp32_with_fp32_weights(small_config: Make, tmp_path: Path) -> None:
    """Autocast bf16 keeps fp32 master weights (the checkpoint holds float32 tensors) and its
    first epoch's mean training loss (8 steps of 4 volumes, encoder trained) stays within 2 %
    of fp32's."""
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = small_config(**{"train.epochs": 1, "runtime.precision": precision,
                              "model.freeze_encoder": False, "train.lr_encoder": 1e-4})
        result = fit(cfg, out_dir=tmp_path / precision, progress=False)
        losses[precision] = result.history[0]["train/loss"]
        state = load_checkpoint(tmp_path / precision / "last.pt")["model"]
        assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float32}
    assert losses["bf16"] != losses["fp32"]  # bf16 did compute in bf16
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.02)


def test_an_encoder_from_a_save_pretrained_directory_trains_from_its_saved_weights(
        small_config: Make, tmp_path: Path) -> None:
    """``model.encoder: <dir>`` loads with ``from_pretrained``: the saved weights arrive
    unchanged, and training from them runs (the frozen epoch's checkpoint leaves the encoder
    out: it is the saved one; the trained epoch's holds it, changed)."""
    from transformers import VJEPA2Config, VJEPA2Model

    from octtrain.model.presets import TINY_ENCODER

    torch.manual_seed(123)
    saved = VJEPA2Model(VJEPA2Config(**TINY_ENCODER, crop_size=32, frames_per_clip=16))
    saved.save_pretrained(tmp_path / "encoder")
    cfg = small_config(**{"model.encoder": str(tmp_path / "encoder"), "train.epochs": 2,
                          "model.unfreeze_at_epoch": 1, "train.lr_encoder": 1e-3})
    snapshots: list[dict[str, torch.Tensor]] = []
    result = fit(cfg, out_dir=tmp_path / "run", progress=False,
                 on_epoch_end=lambda e, m: snapshots.append(_encoder_state(tmp_path / "run" / "last.pt")))
    expected = {f"encoder.{k}": v for k, v in saved.encoder.state_dict().items()}
    built = build_model(cfg.model, *cfg.data.shape, 4).state_dict()
    assert all(torch.equal(built[k], v) for k, v in expected.items())  # loaded as saved
    assert snapshots[0] == {}  # frozen: head-only checkpoint
    assert snapshots[1].keys() == expected.keys()
    assert not all(torch.equal(snapshots[1][k], v) for k, v in expected.items())  # epoch 1 trains
    assert result.epochs_run == 2
