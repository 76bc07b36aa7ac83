"""Checkpoints hold only what changes: the head always, the encoder once it was trained; a
checkpoint the disk has no room for leaves the previous one and no temporary file."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from full_disk import FullDisk

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


SAVE_ON_FULL_DISK = """
import json, sys
from pathlib import Path
import torch
from octtrain.config import RuntimeSection
from octtrain.errors import HostError
from octtrain.runtime import init_runtime
from octtrain.train.checkpoint import Checkpointer

runtime = init_runtime(RuntimeSection(device="cpu"))
model = torch.nn.Linear(256, 64)  # 16k weights: 66 kB a checkpoint while AdamW has no state
optimizer = torch.optim.AdamW(model.parameters())
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
checkpointer = Checkpointer(Path(sys.argv[1]), {"train": {}}, {"a": 0, "b": 1}, "balanced_accuracy")
checkpointer.save(runtime, 0, model, optimizer, scheduler, {"best/value": 0.5, "best/epoch": 0}, True)
model(torch.ones(1, 256)).sum().backward()
optimizer.step()  # AdamW's two moments: last.pt triples, past the room left
try:
    checkpointer.save(runtime, 1, model, optimizer, scheduler, {"best/value": 0.6, "best/epoch": 1}, True)
except HostError as err:
    print(json.dumps({"message": str(err), "path": str(err.path)}))
"""


def test_a_checkpoint_the_disk_has_no_room_for_leaves_the_previous_one_and_no_tmp(
    full_disk: Callable[[int], FullDisk],
) -> None:
    disk = full_disk(160 * 1024)  # epoch 0's last.pt and best.pt fit, epoch 1's last.pt does not
    proc = disk.run([sys.executable, "-c", SAVE_ON_FULL_DISK, str(disk.path)])
    assert proc.returncode == 0, proc.stderr
    last = disk.path / "last.pt"
    assert json.loads(proc.stdout) == {
        "message": f"{disk.cause} writing the last checkpoint {last}", "path": str(last)}
    assert sorted(os.listdir(disk.kept)) == ["best.pt", "last.pt"]  # no .last.pt.<pid>.<hex>.tmp
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(disk.kept / name)
        assert (state["epoch"], state["best_epoch"]) == (0, 0)
    assert load_checkpoint(disk.kept / "last.pt")["optimizer"]["state"] == {}  # epoch 0's, whole
