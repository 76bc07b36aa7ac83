"""The launcher (``octtrain/runtime/launcher.py``): ranks started as real gloo processes on the CPU, the
coordinator relaying rank 0's epochs to the callback, and how failures are named.

The rank functions below are module-level so that spawned ranks can unpickle them.
"""

from __future__ import annotations

import functools
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable

import pytest
import torch

from octtrain.callback import EpochChannel, EpochDecision
from octtrain.config.sections import RuntimeSection
from octtrain.errors import ConfigError
from octtrain.runtime.backend import Runtime
from octtrain.runtime.launcher import RankFailed, launch

pytestmark = pytest.mark.timeout(240)

TWO_CPU_RANKS = RuntimeSection(device="cpu", num_processes=2)


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
def test_a_rank_that_dies_is_named_with_its_exit_code(
    how: str, message: str, code: int, live_ranks: Callable[[], list[int]],
) -> None:
    start = time.monotonic()
    with pytest.raises(RankFailed, match=message) as info:
        launch(functools.partial(_rank_1_dies, how=how), TWO_CPU_RANKS, None)
    assert (info.value.rank, info.value.exitcode) == (1, code)
    assert live_ranks() == []
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


def test_rank_failed_survives_pickling() -> None:
    err = pickle.loads(pickle.dumps(RankFailed("rank 1 exited with status 7", 1, 7)))
    assert (str(err), err.rank, err.exitcode) == ("rank 1 exited with status 7", 1, 7)
