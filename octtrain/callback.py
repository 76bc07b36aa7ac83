"""The ``on_epoch_end`` contract between the trainer and whoever runs it (e.g. a search).

After every validation, rank 0 hands the epoch's metrics to the caller's
:data:`EpochCallback`; an exception from it stops the run at that epoch and propagates out of
``fit``. Rank 0 reaches the callback through an :class:`EpochChannel` and gets back an
:class:`EpochDecision`, which it then sends to every other rank, so all ranks leave the loop
at the same epoch.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

EpochCallback = Callable[[int, dict[str, Any]], None]  # (epoch counted from 0, metrics)


class EpochDecision(enum.Enum):
    """What every rank does after an epoch's callback."""

    CONTINUE = "continue"
    STOP = "stop"  # the callback raised: its exception is re-raised by whoever ran it


class EpochChannel:
    """Rank 0's way to run the epoch callback: ``decide(epoch, metrics)`` → continue or stop.

    In a single-process run the callback runs in place and its exception propagates as is;
    in a launched run it runs in the coordinator (:mod:`octtrain.runtime.launcher`), whose answer comes
    back over ``conn``.
    """

    def __init__(self, callback: EpochCallback | None = None, conn: Connection | None = None):
        self._callback = callback
        self._conn = conn

    def decide(self, epoch: int, metrics: dict[str, Any]) -> EpochDecision:
        if self._conn is not None:
            self._conn.send(("epoch", epoch, metrics))
            reply: EpochDecision = self._conn.recv()
            return reply
        if self._callback is not None:
            self._callback(epoch, metrics)
        return EpochDecision.CONTINUE
