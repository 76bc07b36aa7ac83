"""Data-parallel training and the launch coordinator, with two real gloo processes on the CPU.

The same code runs on TPU through ``torch_xla.launch`` (only the collectives' backend differs,
see ``octtrain/runtime.py``); on CPU-PJRT ``torch_xla.launch`` runs all devices as threads of
one process, where multi-device collectives were seen to hang, so the multi-process logic is
tested here, with gloo.

The rank functions below are module-level so that spawned ranks can unpickle them.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from octtrain.callback import EpochChannel, EpochDecision
from octtrain.config import RuntimeSection, TrainConfig
from octtrain.errors import ConfigError
from octtrain.runtime import RankFailed, Runtime, launch
from octtrain.tracking import read_metrics

pytestmark = pytest.mark.timeout(240)

TWO_CPU_RANKS = RuntimeSection(device="cpu", num_processes=2)


def _live_ranks() -> list[int]:
    """PIDs of running processes spawned by this one through multiprocessing (ranks), not
    counting multiprocessing's own resource tracker, which lives as long as this process."""
    multiprocessing.active_children()  # reaps finished multiprocessing children
    me, alive = os.getpid(), []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]  # after "pid (comm)"
        if int(ppid) == me and state != "Z" and b"spawn_main" in cmdline:
            alive.append(int(entry.name))
    return alive


# ---- the trainer on two ranks -----------------------------------------------------------------


def test_two_ranks_train_exactly_like_one_process_with_twice_the_batch(
    small_config: Callable[..., TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2 ranks x batch 2 == 1 process x batch 4: with drop_last, DistributedSampler deals the
    same permutation to the ranks in turn, so the union of the ranks' k-th batches is the
    single process's k-th batch. Class weights, label smoothing, accumulation, clipping and an
    unfrozen encoder are all on; no dropout and no augmentation, so nothing else differs."""
    from octtrain.loop import fit

    monkeypatch.setenv("OCTTRAIN_DEBUG_SAVE_RANKS", "1")  # every rank writes rank{r}_weights.pt
    common = {"train.epochs": 2, "train.grad_accum_steps": 2, "model.unfreeze_at_epoch": 1,
              "train.lr_encoder": 1e-4, "train.label_smoothing": 0.1, "train.grad_clip": 1.0}
    one = fit(small_config(**common, **{"train.batch_size": 4}),
              out_dir=tmp_path / "one", progress=False)
    two = fit(small_config(**common, **{"train.batch_size": 2, "runtime.num_processes": 2}),
              out_dir=tmp_path / "two", progress=False)

    rank0 = torch.load(tmp_path / "two" / "rank0_weights.pt")
    rank1 = torch.load(tmp_path / "two" / "rank1_weights.pt")
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0), "replicas diverged"
    single = torch.load(tmp_path / "one" / "rank0_weights.pt")
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
) -> None:
    from octtrain.loop import fit

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
    assert _live_ranks() == []
    assert "Traceback" not in capfd.readouterr().err  # both ranks left the loop, none crashed
    assert end - pruned_at[0] < 15, f"ranks took {end - pruned_at[0]:.1f}s to stop"
    assert end - start < 60


# ---- the coordinator: decisions, results and failures -----------------------------------------


def _epochs_until_stopped(runtime: Runtime, channel: EpochChannel) -> int:
    """A minimal rank body: sum over ranks, ask rank 0's callback, obey the broadcast verdict."""
    epochs = 0
    for epoch in range(5):
        total = runtime.all_reduce_sum(torch.tensor([runtime.rank + 1.0]))
        decision = channel.decide(epoch, {"sum": float(total[0])}) if runtime.is_master else None
        decision = runtime.broadcast_object(decision, f"decision.{epoch}")
        epochs += 1
        if decision is EpochDecision.STOP:
            break
    return epochs


def test_launch_relays_rank_0_metrics_to_the_callback_and_returns_its_result() -> None:
    seen: list[tuple[int, float]] = []
    threads_before = threading.active_count()
    result = launch(_epochs_until_stopped, TWO_CPU_RANKS,
                    lambda epoch, metrics: seen.append((epoch, metrics["sum"])))
    assert result == 5
    assert seen == [(e, 3.0) for e in range(5)]  # 1 + 2: summed over both ranks
    assert threading.active_count() == threads_before  # the coordinator's threads are gone


def _rank_1_dies(runtime: Runtime, channel: EpochChannel, how: str) -> None:
    runtime.barrier("start")
    if runtime.rank == 1:
        if how == "exit":
            os._exit(7)
        os.kill(os.getpid(), signal.SIGKILL)
    runtime.all_reduce_sum(torch.ones(1))  # rank 0 loses its peer here


@pytest.mark.parametrize(("how", "message", "code"), [
    ("exit", r"^rank 1 exited with status 7$", 7),
    ("kill", r"^rank 1 was killed by SIGKILL \(out of memory\?\)$", -9),
])
def test_a_rank_that_dies_is_named_with_its_exit_code(how: str, message: str, code: int) -> None:
    import functools

    start = time.monotonic()
    with pytest.raises(RankFailed, match=message) as info:
        launch(functools.partial(_rank_1_dies, how=how), TWO_CPU_RANKS, None)
    assert (info.value.rank, info.value.exitcode) == (1, code)
    assert _live_ranks() == []
    assert time.monotonic() - start < 60


def _rank_0_rejects_its_config(runtime: Runtime, channel: EpochChannel) -> None:
    if runtime.rank == 0:
        raise ConfigError([("train.batch_size", "8 does not fit")], "trial.yaml")
    runtime.barrier("never completes")  # rank 1's collective fails when rank 0 is gone


def test_rank_0s_own_exception_wins_over_its_peers_lost_collectives() -> None:
    with pytest.raises(ConfigError) as info:
        launch(_rank_0_rejects_its_config, TWO_CPU_RANKS, None)
    # The package's exceptions cross the process boundary with their attributes.
    assert info.value.problems == [("train.batch_size", "8 does not fit")]
    assert info.value.source == "trial.yaml"
    assert isinstance(info.value.__cause__, RankFailed)
    assert "rank 0 exited with status 1" in str(info.value.__cause__)


def _rank_1_raises(runtime: Runtime, channel: EpochChannel) -> None:
    if runtime.rank == 1:
        raise ValueError("shard 1 is unreadable")
    runtime.barrier("never completes")


def test_a_non_master_ranks_exception_is_a_rank_failed_caused_by_it() -> None:
    with pytest.raises(RankFailed, match=r"^rank 1 exited with status 1:\n") as info:
        launch(_rank_1_raises, TWO_CPU_RANKS, None)
    assert "ValueError: shard 1 is unreadable" in str(info.value)  # its traceback
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.rank == 1
