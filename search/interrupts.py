"""Stopping by signal: the first SIGINT or SIGTERM interrupts; any more are noted, never obeyed.

``octsearch run`` and ``octsearch serve-storage`` treat SIGTERM (a scheduler's stop, a spot VM's
notice) like Ctrl-C. Within :func:`stop_signals` the first of them raises KeyboardInterrupt
(SIGTERM: :class:`Terminated`, which names it) in the main thread, and the worker stops its running
trials: each trial process writes its resume checkpoint and the trial is re-queued
(:mod:`search.worker.requeue`). That stop takes up to the trial process's grace. A second Ctrl-C
or SIGTERM during it, in any order and any number, must not cut it short: the trial would stay
RUNNING until its heartbeat went stale and its checkpoint would be orphaned. So after the first,
a stop signal only prints a line (``again``).

Work of the main thread that must not be cut in two (asking a trial and handing it to a slot,
failing stale trials, telling a trial) runs :func:`shielded`: a first signal that arrives inside
is raised when the block ends (a block that waits for an unreachable database defers it until
the database answers or the outage limit is reached).

Signals reach the main thread only; elsewhere these helpers do nothing. A SIGINT that the process
inherited as ignored (``nohup``, a background job of a script) stays ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM (or another stop signal but SIGINT), handled like Ctrl-C; names the signal."""

    def __init__(self, which: int | str) -> None:  # a number, or a name (copies by args)
        sig = signal.Signals[which] if isinstance(which, str) else signal.Signals(which)
        super().__init__(sig.name)
        self.signum = int(sig)


def interrupt_for(signum: int) -> KeyboardInterrupt:
    """The exception a first stop signal raises: KeyboardInterrupt for SIGINT, else Terminated."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def exit_status(err: KeyboardInterrupt) -> int:
    """128 + the signal's number: 130 for Ctrl-C, 143 for SIGTERM."""
    return 128 + (err.signum if isinstance(err, Terminated) else int(signal.SIGINT))


def exiting() -> None:
    """The process stops after a stop signal: later SIGINT/SIGTERM are ignored from here on, so
    one landing in the interpreter's shutdown (an atexit callback, a library's finalizer) cannot
    print a KeyboardInterrupt traceback over the clean exit. SIGKILL still ends it."""
    if _main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)


class _State:
    def __init__(self) -> None:
        self.installed = False
        self.again = ""  # the line printed for a signal after the first
        self.depth = 0  # nesting of shielded() blocks in the main thread
        self.pending: int | None = None  # a first signal deferred by a shield
        self.raised = False  # the first signal was raised: later ones are only noted


_state = _State()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.raised or _state.pending is not None:
        # os.write: the main thread may be inside a write to sys.stderr (not reentrant)
        with contextlib.suppress(OSError):
            os.write(2, f"octsearch: {signal.Signals(signum).name} again: {_state.again}\n".encode())
        return
    if _state.depth:
        _state.pending = signum
        return
    _state.raised = True
    raise interrupt_for(signum)


@contextlib.contextmanager
def stop_signals(again: str = "already stopping") -> Iterator[None]:
    """Within the block the first SIGINT or SIGTERM raises (see module); the handlers before it
    come back after it. ``again``: what a later signal prints (after ``SIGNAL again: ``)."""
    if not _main_thread():
        yield
        return
    signals = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signals.append(signal.SIGINT)
    before = (_state.installed, _state.again, _state.depth, _state.pending, _state.raised)
    _state.installed, _state.again, _state.depth, _state.pending, _state.raised = (
        True, again, 0, None, False)
    previous = {s: signal.signal(s, _handler) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        (_state.installed, _state.again, _state.depth, _state.pending, _state.raised) = before


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """A first stop signal that arrives inside the block is raised when it ends (see module)."""
    if not (_state.installed and _main_thread()):
        yield
        return
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
    raise_pending()


def raise_pending() -> None:
    """Raise a first stop signal that a shield deferred, if any, once outside every shield."""
    if not (_state.installed and _main_thread()) or _state.depth or _state.pending is None:
        return
    signum, _state.pending, _state.raised = _state.pending, None, True
    raise interrupt_for(signum)
