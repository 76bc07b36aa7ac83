"""A trial process dies with its worker, however the worker dies (SIGKILL, the OOM killer).

The trial process runs in its own session (so that a Ctrl-C meant for the worker does not
reach it first), so nothing stops it when its worker is gone: on a TPU VM such an orphan
would hold the chips the restarted worker needs. Two mechanisms, both set up by the child
first thing (:func:`die_with_parent`):

- Linux: ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel sends SIGTERM to the trial process
  the moment its parent thread exits. The parent may have died before the call; the child then
  sees a parent pid other than the one it was given, and stops at once.
- Everywhere: a lifeline, a pipe whose write end only the worker holds (:func:`lifeline`). A
  daemon thread of the child blocks on the read end; end-of-file means the worker is gone, and
  the child sends SIGTERM to its whole process group (its data loaders and ranks too), then
  SIGKILL after :data:`STOP_GRACE_S`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

LIFELINE_FD_ENV = "OCTSEARCH_LIFELINE_FD"  # the read end of the pipe, in the child
WORKER_PID_ENV = "OCTSEARCH_WORKER_PID"  # the pid the child's parent must have
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_GRACE_S = 5.0  # after SIGTERM to its group, how long before the trial process SIGKILLs it


@contextmanager
def lifeline() -> Iterator[tuple[dict[str, str], tuple[int, ...]]]:
    """Parent side: ``(environment, fds to pass)`` for a child that must die with this process.

    Start the child within the block with both (``subprocess.Popen(env=..., pass_fds=...)``);
    the pipe is closed when the block ends. The write end is not inheritable, so no other
    child of this process holds it open.
    """
    read_fd, write_fd = os.pipe()
    try:
        yield {LIFELINE_FD_ENV: str(read_fd), WORKER_PID_ENV: str(os.getpid())}, (read_fd,)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def die_with_parent(*, pdeathsig: bool = True) -> None:
    """Child side, first thing: stop this process (and its group) when the parent dies.

    Does nothing for a process not started inside :func:`lifeline`. ``pdeathsig=False`` relies
    on the lifeline pipe alone, as on systems without ``prctl``. The variables are removed from
    the environment, so this process's own children do not take them for theirs.
    """
    expected = os.environ.pop(WORKER_PID_ENV, None)
    fd = os.environ.pop(LIFELINE_FD_ENV, None)
    if pdeathsig and expected is not None:
        _set_parent_death_signal(signal.SIGTERM)
    if expected is not None and os.getppid() != int(expected):
        _stop_group("the worker was gone before the trial process started")
    if fd is not None:
        threading.Thread(target=_watch, args=(int(fd),), name="lifeline", daemon=True).start()


def _set_parent_death_signal(sig: signal.Signals) -> bool:
    """``prctl(PR_SET_PDEATHSIG, sig)``; False where there is no such call (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return bool(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0)


def _watch(fd: int) -> None:
    """Block until the lifeline's write end is closed everywhere: the worker is gone."""
    try:
        while os.read(fd, 1):
            pass  # nobody writes; data would only mean a confused caller
    except OSError:
        pass
    _stop_group("the worker is gone")


def _stop_group(why: str) -> None:
    """SIGTERM this process's group (only itself when it leads none), SIGKILL if it lingers.

    The trial process stops on SIGTERM as on any stop (a resume checkpoint at its next step, see
    :mod:`search.trial.process`); its output went to a pipe the worker read, and a write to that
    pipe now fails (EPIPE) and would turn the stop into a crash: from here on it goes nowhere.
    """
    with contextlib.suppress(OSError):  # nobody reads stderr any more, but a terminal might
        print(f"octsearch: trial process {os.getpid()}: {why}; stopping", file=sys.stderr,
              flush=True)
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.dup2(devnull, sys.stderr.fileno())
    leads_group = os.getpgrp() == os.getpid()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if leads_group:
            os.killpg(os.getpid(), sig)
        else:
            os.kill(os.getpid(), sig)
        time.sleep(STOP_GRACE_S)  # reached only where SIGTERM is caught or ignored
