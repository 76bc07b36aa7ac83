"""Preemption: a stop requested by a signal, honoured at the next optimizer-step boundary.

A spot or preemptible VM gets SIGTERM and about 30 s before it is gone. Whoever runs ``fit``
(``octtrain train``, a search's trial process) installs :func:`stop_on_signals`; the handler
only sets a flag (:func:`request_stop`). ``fit(..., preempt_to=PATH)`` looks at the flag before
each optimizer step (never inside one: accumulated gradients are not saved), writes a resume
checkpoint to ``PATH`` (:mod:`octtrain.train.resume`) and raises :class:`Preempted`;
``fit(..., resume_from=PATH)`` continues from it.

With several processes (``runtime.num_processes > 1``) every rank installs the handler and
rank 0's flag decides for all (:func:`agreed_stop`, one small object broadcast per optimizer
step), so all ranks stop at the same step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from octtrain.runtime.backend import Runtime

STOP_SIGNALS = (signal.SIGTERM,)  # what a spot VM, a scheduler or `kill` sends

_requested: list[int] = []  # the signal numbers received since the last clear_stop()


def request_stop(signum: int = signal.SIGTERM) -> None:
    """Ask a running ``fit`` to stop at its next optimizer-step boundary (signal-handler safe)."""
    _requested.append(int(signum))


def stop_requested() -> int | None:
    """The signal number of the first stop request, or None."""
    return _requested[0] if _requested else None


def clear_stop() -> None:
    _requested.clear()


def _handler(signum: int, frame: FrameType | None) -> None:
    request_stop(signum)


@contextlib.contextmanager
def stop_on_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[None]:
    """Within the block, ``signals`` request a stop instead of ending the process.

    Only the main thread can install handlers; elsewhere (a rank running as a thread) this does
    nothing and the process keeps its handlers.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def agreed_stop(runtime: Runtime, tag: str) -> bool:
    """Whether to stop now, the same answer on every rank (rank 0's flag). Call on every rank."""
    return bool(runtime.broadcast_object(stop_requested() is not None, f"octtrain.stop.{tag}"))


class Preempted(Exception):
    """``fit`` stopped on request at an optimizer-step boundary and wrote a resume checkpoint.

    Not an :class:`~octtrain.errors.OcttrainError`: nothing went wrong. ``epochs_done`` epochs
    were validated and reported; training continues at micro-batch ``micro_batch`` of
    ``epoch`` (``micro_batch`` = the epoch's count: only its validation is left).
    """

    def __init__(self, checkpoint: str | Path, epoch: int, micro_batch: int, epochs_done: int,
                 signum: int = signal.SIGTERM) -> None:
        self.checkpoint = str(checkpoint)
        self.epoch, self.micro_batch, self.epochs_done, self.signum = (
            epoch, micro_batch, epochs_done, signum)
        super().__init__(f"preempted by {signal_name(signum)} at epoch {epoch}, micro-batch "
                         f"{micro_batch}; resume checkpoint {self.checkpoint}")

    def __reduce__(self) -> tuple[Any, ...]:  # travels from a rank to the launcher intact
        return (type(self), (self.checkpoint, self.epoch, self.micro_batch, self.epochs_done,
                             self.signum))


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
