"""Preemption and resume through ``fit``: a run stopped by SIGTERM mid-epoch and resumed from its
resume checkpoint ends bit-identical to an uninterrupted run (CPU, num_workers 0)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from octtrain import ConfigError, TrainConfig, fit
from octtrain.model.classifier import OctClassifier
from octtrain.runtime.preempt import Preempted, clear_stop
from octtrain.tracking.tracker import read_metrics
from octtrain.train.checkpoint import load_checkpoint

Make = Callable[..., TrainConfig]
TIMING = ("epoch_s", "io/load_s", "train/compute_s", "io/stall_share")


@pytest.fixture
def learning_config(small_config: Make) -> TrainConfig:
    """8 micro-batches of 4 per epoch, 2 per optimizer step; dropout, augmentation and an
    encoder that unfreezes at epoch 1, so every generator and the optimizer state matter."""
    return small_config(**{
        "train.epochs": 3, "train.grad_accum_steps": 2, "train.warmup_epochs": 1,
        "train.lr_encoder": 1e-3, "model.unfreeze_at_epoch": 1, "model.head.hidden": 16,
        "model.head.dropout": 0.3, "data.augment.flip": True,
        "data.augment.intensity_jitter": 0.1, "data.num_workers": 0,  # bit-exact: see README
    })


@pytest.fixture
def sigterm_after_forwards() -> Iterator[Callable[[int], None]]:
    """``arm(n)``: this process gets a real SIGTERM during the ``n``-th training forward pass."""
    seen = [0]
    at: list[int] = []

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        if isinstance(module, OctClassifier) and module.training:
            seen[0] += 1
            if at and seen[0] == at[0]:
                os.kill(os.getpid(), signal.SIGTERM)

    def arm(n: int) -> None:
        seen[0], at[:] = 0, [n]

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    yield arm
    handle.remove()
    clear_stop()


def _comparable(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if k not in TIMING and not k.startswith("startup/")}
            for m in history]


def test_preempted_mid_epoch_then_resumed_equals_uninterrupted(
        learning_config: TrainConfig, tmp_path: Path,
        sigterm_after_forwards: Callable[[int], None]) -> None:
    whole = fit(learning_config, out_dir=tmp_path / "whole", progress=False)

    # SIGTERM during the 11th forward: epoch 1, micro-batch 2, in the middle of optimizer step 1.
    # The step is finished (micro-batch 3), then the run stops before micro-batch 4.
    run, resume = tmp_path / "run", tmp_path / "run" / "resume.pt"
    sigterm_after_forwards(11)
    with pytest.raises(Preempted) as stopped:
        fit(learning_config, out_dir=run, progress=False, preempt_to=resume)
    err = stopped.value
    assert (err.epoch, err.micro_batch, err.epochs_done, err.signum) == (1, 4, 1, signal.SIGTERM)
    state = load_checkpoint(resume)
    assert state["epoch"] == 1 and state["ranks"][0]["micro_batch"] == 4
    assert state["scheduler"]["last_epoch"] == 4 + 2  # 4 steps in epoch 0, 2 in epoch 1
    clear_stop()

    reported: list[int] = []
    resumed = fit(learning_config, out_dir=run, progress=False, resume_from=resume,
                  preempt_to=resume, on_epoch_end=lambda epoch, metrics: reported.append(epoch))
    assert reported == [1, 2]  # epoch 0 was reported by the first run, once
    assert not resume.exists()  # the resumed run finished: its checkpoint is gone
    assert _comparable(resumed.history) == _comparable(whole.history)  # LRs included
    assert (resumed.best_epoch, resumed.best_value) == (whole.best_epoch, whole.best_value)
    a, b = load_checkpoint(whole.out_dir / "last.pt"), load_checkpoint(run / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["scheduler"] == b["scheduler"]
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl") if r["phase"] == "epoch"] == [0, 1, 2]


def test_stop_between_epochs_resumes_at_the_next_epoch(
        learning_config: TrainConfig, tmp_path: Path,
        sigterm_after_forwards: Callable[[int], None]) -> None:
    """A stop during epoch 0's last optimizer step: only epoch 0's validation was left, and
    the resumed run validates and reports it."""
    resume = tmp_path / "run" / "resume.pt"
    sigterm_after_forwards(8)
    with pytest.raises(Preempted) as stopped:
        fit(learning_config, out_dir=tmp_path / "run", progress=False, preempt_to=resume)
    assert (stopped.value.epoch, stopped.value.micro_batch, stopped.value.epochs_done) == (0, 8, 0)
    clear_stop()
    reported: list[int] = []
    result = fit(learning_config, out_dir=tmp_path / "run", progress=False, resume_from=resume,
                 on_epoch_end=lambda epoch, metrics: reported.append(epoch))
    assert reported == [0, 1, 2] and result.history[0]["train/count"] == 32


def test_resume_refuses_another_config(learning_config: TrainConfig, tmp_path: Path,
                                       sigterm_after_forwards: Callable[[int], None]) -> None:
    resume = tmp_path / "run" / "resume.pt"
    sigterm_after_forwards(3)
    with pytest.raises(Preempted):
        fit(learning_config, out_dir=tmp_path / "run", progress=False, preempt_to=resume)
    clear_stop()
    other = learning_config.with_overrides({"train.lr_head": 0.5})
    with pytest.raises(ConfigError, match=r"another config \(differs in train.lr_head\)"):
        fit(other, out_dir=tmp_path / "run", progress=False, resume_from=resume)
    with pytest.raises(ConfigError, match="no resume checkpoint"):
        fit(learning_config, out_dir=tmp_path / "run", progress=False,
            resume_from=tmp_path / "missing.pt")


@pytest.mark.slow
def test_two_ranks_stop_at_the_same_step_and_resume_exactly(
        learning_config: TrainConfig, tmp_path: Path, live_ranks: Callable[[], list[int]]) -> None:
    """Both ranks get SIGTERM (as from a process group's kill) a moment into epoch 1; rank 0's
    flag decides for both at a step boundary, each rank's generators and partial sums are saved,
    and the resumed two-rank run equals the uninterrupted one."""
    import threading

    cfg = learning_config.with_overrides({"train.batch_size": 2, "train.epochs": 2,
                                          "runtime.num_processes": 2})
    whole = fit(cfg, out_dir=tmp_path / "whole", progress=False)

    def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
        if epoch == 0:
            ranks = live_ranks()
            assert len(ranks) == 2
            threading.Timer(0.2, lambda: [os.kill(pid, signal.SIGTERM) for pid in ranks]).start()

    resume = tmp_path / "run" / "resume.pt"
    with pytest.raises(Preempted) as stopped:
        fit(cfg, out_dir=tmp_path / "run", progress=False, preempt_to=resume,
            on_epoch_end=on_epoch_end)
    assert stopped.value.epoch == 1 and stopped.value.epochs_done == 1
    state = load_checkpoint(resume)
    assert [r["micro_batch"] for r in state["ranks"]] == [stopped.value.micro_batch] * 2
    print(f"two ranks stopped at epoch 1, micro-batch {stopped.value.micro_batch}")
    resumed = fit(cfg, out_dir=tmp_path / "run", progress=False, resume_from=resume)
    assert _comparable(resumed.history) == _comparable(whole.history)
    a, b = load_checkpoint(whole.out_dir / "last.pt"), load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
