"""Stop signals (search/interrupts.py): the first SIGINT or SIGTERM interrupts, later ones are only
noted, a shield defers the first to its end. Real signals sent to this process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from search.interrupts import Terminated, exit_status, raise_pending, shielded, stop_signals


def _deliver(sig: signal.Signals) -> None:
    """Send ``sig`` to this process and let its handler run before returning."""
    os.kill(os.getpid(), sig)
    signal.sigtimedwait([], 0.2)


@pytest.mark.parametrize(("first", "raised", "status"), [
    (signal.SIGTERM, Terminated, 143),
    (signal.SIGINT, KeyboardInterrupt, 130),
])
def test_the_first_stop_signal_interrupts_and_the_handlers_come_back(
        first: signal.Signals, raised: type[KeyboardInterrupt], status: int) -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(raised) as caught, stop_signals():
        _deliver(first)
    assert exit_status(caught.value) == status
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize("sequence", [
    (signal.SIGINT, signal.SIGINT),
    (signal.SIGTERM, signal.SIGTERM, signal.SIGINT),
    (signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM),
])
def test_signals_after_the_first_are_only_noted(sequence: tuple[signal.Signals, ...],
                                                capfd: pytest.CaptureFixture[str]) -> None:
    """The reported bug: a second Ctrl-C (or TERM, TERM, INT) cut short the stop of the trial
    process and left the trial RUNNING. Here the stop (the except block) runs to its end."""
    stopped = False
    with stop_signals("already stopping: testing"):
        try:
            _deliver(sequence[0])
        except KeyboardInterrupt:
            for sig in sequence[1:]:
                _deliver(sig)
            stopped = True
    assert stopped
    err = capfd.readouterr().err.splitlines()
    assert err == [f"octsearch: {sig.name} again: already stopping: testing" for sig in sequence[1:]]


def test_a_shield_defers_the_first_signal_to_its_end(capfd: pytest.CaptureFixture[str]) -> None:
    done = []
    with pytest.raises(Terminated), stop_signals("noted"):
        with shielded():
            _deliver(signal.SIGTERM)
            done.append("inside")
            with shielded():  # nested: raised at the outer end only
                _deliver(signal.SIGINT)  # a second one, noted
                done.append("nested")
            done.append("after nested")
        done.append("never")
    assert done == ["inside", "nested", "after nested"]
    assert capfd.readouterr().err == "octsearch: SIGINT again: noted\n"


def test_a_shield_that_raises_keeps_the_signal_for_later() -> None:
    with pytest.raises(KeyboardInterrupt), stop_signals():
        with pytest.raises(ValueError), shielded():
            _deliver(signal.SIGINT)
            raise ValueError("the block failed")
        raise_pending()


def test_an_ignored_sigint_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            _deliver(signal.SIGINT)  # nothing happens
            with pytest.raises(Terminated):
                _deliver(signal.SIGTERM)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_outside_stop_signals_a_shield_changes_nothing() -> None:
    with pytest.raises(KeyboardInterrupt), shielded():
        _deliver(signal.SIGINT)  # Python's own handler: raises at once


def test_once_exiting_a_stop_signal_cannot_interrupt_the_shutdown() -> None:
    """Found by the chaos soak: a SIGINT that reached a stopped worker during the interpreter's
    shutdown printed a KeyboardInterrupt traceback from an atexit callback."""
    code = ("import atexit, os, signal, time\n"
            "from search.interrupts import exiting\n"
            "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.2),"
            " os.kill(os.getpid(), signal.SIGTERM), time.sleep(0.2), print('shut down')))\n"
            "exiting()\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "shut down\n", "")
