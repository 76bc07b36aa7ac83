"""``fit`` on two data-parallel ranks: real gloo processes on the CPU.

The same code runs on TPU through ``torch_xla.launch`` (only the collectives' backend differs,
see ``octtrain/runtime/backend.py``); on CPU-PJRT ``torch_xla.launch`` runs all devices as threads of
one process, where multi-device collectives were seen to hang, so the multi-process logic is
tested here, with gloo. The launcher itself is tested in ``test_launch.py``.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from octtrain.callback import EpochChannel
from octtrain.config import RuntimeSection
from octtrain.config.train_config import TrainConfig
from octtrain.model import OctClassifier
from octtrain.runtime import Runtime, launch
from octtrain.tracking.tracker import read_metrics

pytestmark = pytest.mark.timeout(240)

# ---- the trainer on two ranks -----------------------------------------------------------------


@contextlib.contextmanager
def _classifier_seen() -> Iterator[list[OctClassifier]]:
    """Yields a list of the classifiers run in this process while in the block (fit builds its
    model inside; this is how a test gets hold of it)."""
    seen: list[OctClassifier] = []

    def note(module: torch.nn.Module, args: Any) -> None:
        if isinstance(module, OctClassifier) and not any(module is m for m in seen):
            seen.append(module)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(note)
    try:
        yield seen
    finally:
        handle.remove()


def _rank_keeping_weights(runtime: Runtime, channel: EpochChannel, *,
                          rank_fn: Callable[[Runtime, EpochChannel], Any], out: Path) -> Any:
    """One rank of fit (``rank_fn``), then its final weights to ``out/rank<r>_weights.pt``: a
    checkpoint holds rank 0's only, and the replicas must be checked against each other."""
    with _classifier_seen() as seen:
        result = rank_fn(runtime, channel)
    (model,) = seen
    torch.save(runtime.to_cpu(model.state_dict()), out / f"rank{runtime.rank}_weights.pt")
    return result


def _launch_keeping_weights(out: Path) -> Callable[..., Any]:
    """A stand-in for fit's ``launch`` whose every rank also writes its final weights."""

    def keeping(rank_fn: Callable[[Runtime, EpochChannel], Any], cfg: RuntimeSection,
                *args: Any) -> Any:
        return launch(functools.partial(_rank_keeping_weights, rank_fn=rank_fn, out=out), cfg,
                      *args)

    return keeping


def test_two_ranks_train_exactly_like_one_process_with_twice_the_batch(
    small_config: Callable[..., TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2 ranks x batch 2 == 1 process x batch 4: with drop_last, DistributedSampler deals the
    same permutation to the ranks in turn, so the union of the ranks' k-th batches is the
    single process's k-th batch. Class weights, label smoothing, accumulation, clipping and an
    unfrozen encoder are all on; no dropout and no augmentation, so nothing else differs."""
    from octtrain.train import loop
    from octtrain.train.loop import fit

    common = {"train.epochs": 2, "train.grad_accum_steps": 2, "model.unfreeze_at_epoch": 1,
              "train.lr_encoder": 1e-4, "train.label_smoothing": 0.1, "train.grad_clip": 1.0}
    with _classifier_seen() as seen:  # one process: fit trains in this one
        one = fit(small_config(**common, **{"train.batch_size": 4}),
                  out_dir=tmp_path / "one", progress=False)
    (model,) = seen
    single = {k: v.detach().clone() for k, v in model.state_dict().items()}
    monkeypatch.setattr(loop, "launch", _launch_keeping_weights(tmp_path / "two"))
    two = fit(small_config(**common, **{"train.batch_size": 2, "runtime.num_processes": 2}),
              out_dir=tmp_path / "two", progress=False)

    rank0 = torch.load(tmp_path / "two" / "rank0_weights.pt")
    rank1 = torch.load(tmp_path / "two" / "rank1_weights.pt")
    assert rank0.keys() == rank1.keys() == single.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "replicas diverged"
    for k in single:
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-4, atol=1e-5, msg=k)

    assert two.epochs_run == one.epochs_run == 2
    for m1, m2 in zip(one.history, two.history, strict=True):
        # Counts are summed over ranks, not means averaged: identical confusion matrices.
        assert m2["val/confusion"] == m1["val/confusion"]
        assert sum(map(sum, m2["val/confusion"])) == 8  # the padding is masked out
        assert m2["val/balanced_accuracy"] == m1["val/balanced_accuracy"]
        for key in ("train/loss", "val/loss", "train/accuracy"):
            assert m2[key] == pytest.approx(m1[key], rel=1e-5), key
    # Only rank 0 logs, and it logged every epoch.
    assert [r["epoch"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl")] == [0, 1]


class Pruned(Exception):
    """What a search's epoch callback raises to stop a trial (optuna.TrialPruned's role)."""


def test_a_prune_on_rank_0_ends_both_ranks_within_seconds(
    small_config: Callable[..., TrainConfig], tmp_path: Path, capfd: pytest.CaptureFixture[str],
    live_ranks: Callable[[], list[int]],
) -> None:
    from octtrain.train.loop import fit

    calls: list[int] = []
    pruned_at: list[float] = []

    def on_epoch_end(epoch: int, metrics: dict[str, Any]) -> None:
        calls.append(epoch)
        assert "val/balanced_accuracy" in metrics
        if epoch == 1:
            pruned_at.append(time.monotonic())
            raise Pruned("collapsed at epoch 1")

    cfg = small_config(**{"train.epochs": 6, "train.batch_size": 2, "runtime.num_processes": 2})
    start = time.monotonic()
    with pytest.raises(Pruned, match="collapsed at epoch 1"):
        fit(cfg, out_dir=tmp_path / "run", on_epoch_end=on_epoch_end, progress=False)
    end = time.monotonic()

    assert calls == [0, 1]
    assert [r["epoch"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [0, 1]
    assert live_ranks() == []
    assert "Traceback" not in capfd.readouterr().err  # both ranks left the loop, none crashed
    assert end - pruned_at[0] < 15, f"ranks took {end - pruned_at[0]:.1f}s to stop"
    assert end - start < 60
