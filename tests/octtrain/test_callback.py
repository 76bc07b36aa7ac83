"""The epoch callback contract (``octtrain/callback.py``) in one process; across processes it
is tested with the launcher in ``test_launch.py``."""

from __future__ import annotations

from typing import Any

import pytest

from octtrain.callback import EpochChannel, EpochDecision


def test_epoch_channel_runs_the_callback_in_place_and_lets_its_exception_through() -> None:
    seen: list[tuple[int, dict[str, Any]]] = []

    class Pruned(Exception):
        pass

    def callback(epoch: int, metrics: dict[str, Any]) -> None:
        seen.append((epoch, metrics))
        if epoch == 1:
            raise Pruned("collapsed")

    channel = EpochChannel(callback)
    assert channel.decide(0, {"val/balanced_accuracy": 0.25}) is EpochDecision.CONTINUE
    with pytest.raises(Pruned, match="collapsed"):
        channel.decide(1, {"val/balanced_accuracy": 0.25})
    assert [e for e, _ in seen] == [0, 1]
