"""A worker's trial slots: up to N trials at once, each run by a thread of its own.

A slot is a place for one running trial, pinned to its devices (:class:`search.trial.placement.Assignment`:
the environment of its trial processes). The worker's main thread asks each trial (one at a
time, so the counting rule sees every trial it started) and hands it to a free slot, whose
thread runs it as :func:`search.worker.loop.run_one_trial` does for a worker of one slot: its own
trial process, its own heartbeat, told when it ends. Each slot counts its own failures in a
row; a slot that reaches the limit retires and the others go on.

Only the main thread receives Ctrl-C / SIGTERM: :meth:`SlotPool.stop_all` hands the
interruption to every running slot (a :class:`~search.trial.process.StopRequest`), whose
thread stops its trial process and fails the trial as a one-slot worker would, and waits
for them.

Every line a slot writes (progress, the trial's output) starts with ``[slot I]``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO, cast

import optuna

from search.trial import Assignment, StopRequest


@dataclass(frozen=True)
class SlotRun:
    """What a slot gives the trial it runs: the trial processes' environment (the worker's and the
    slot's devices), the stop request the slot's thread watches, the devices' label recorded with
    the trial (empty for a worker of one slot on every device), and the slot's output."""

    env: Mapping[str, str] = field(default_factory=dict)
    stop: StopRequest | None = None
    devices: str = ""
    out: TextIO | None = None


TrialFn = Callable[[SlotRun], optuna.trial.FrozenTrial]


class SlotOut:
    """A text stream that starts every line with the slot's name; whole lines, one at a time."""

    def __init__(self, out: TextIO, name: str, lock: threading.Lock) -> None:
        self.out, self.prefix, self.lock = out, f"[{name}] ", lock
        self.partial = ""

    def write(self, text: str) -> int:
        lines = (self.partial + text).split("\n")
        self.partial = lines.pop()
        if lines:
            with self.lock:
                self.out.write("".join(f"{self.prefix}{line}\n" for line in lines))
        return len(text)

    def flush(self) -> None:
        with self.lock:
            self.out.flush()


@dataclass
class Slot:
    """One slot: its devices, its failures in a row, and the trial it is running."""

    assignment: Assignment
    out: TextIO | None
    failures_in_a_row: int = 0
    retired: str = ""  # why the slot takes no more trials ("" while it does)
    thread: threading.Thread | None = None
    stop: StopRequest = field(default_factory=StopRequest)
    result: optuna.trial.FrozenTrial | None = None
    error: BaseException | None = None

    @property
    def busy(self) -> bool:
        return self.thread is not None

    @property
    def name(self) -> str:
        return f"slot {self.assignment.slot}"


class SlotPool:
    """The slots of one worker; the main thread starts trials in them and collects the ends."""

    def __init__(self, assignments: list[Assignment], out: TextIO | None) -> None:
        lock = threading.Lock()
        self.prefixed = len(assignments) > 1  # one slot: output as before, unprefixed
        self.slots = [Slot(a, cast("TextIO", SlotOut(out, f"slot {a.slot}", lock))
                           if out is not None and self.prefixed else out)
                      for a in assignments]
        self.ended = threading.Event()  # a slot's trial ended

    def free(self) -> Slot | None:
        return next((s for s in self.slots if not s.busy and not s.retired), None)

    def busy(self) -> list[Slot]:
        return [s for s in self.slots if s.busy]

    def all_retired(self) -> bool:
        return all(s.retired for s in self.slots)

    def start(self, slot: Slot, env: Mapping[str, str], run: TrialFn) -> None:
        """Run ``run(slot_run)`` in the slot's thread (``env``: the worker's environment of trial
        processes, to which the slot adds its devices'); its end is :meth:`done`."""
        slot.stop = StopRequest()
        label = slot.assignment.label if slot.assignment.devices else ""
        slot_run = SlotRun({**env, **slot.assignment.env}, slot.stop, label, slot.out)
        slot.result, slot.error = None, None

        def body() -> None:
            try:
                slot.result = run(slot_run)
            except BaseException as err:  # noqa: BLE001 - handed to the main thread
                slot.error = err
            finally:
                self.ended.set()

        thread = threading.Thread(target=body, name=f"octsearch-{slot.name}", daemon=True)
        thread.start()
        slot.thread = thread  # busy from here: the thread owns the trial

    def done(self) -> list[Slot]:
        """The slots whose trial has ended since the last call (their thread joined)."""
        self.ended.clear()  # before looking: an end from now on wakes the next wait()
        ended = []
        for slot in self.busy():
            assert slot.thread is not None
            if not slot.thread.is_alive():
                slot.thread.join()
                slot.thread = None
                ended.append(slot)
        return ended

    def wait(self, timeout_s: float) -> None:
        """Until a slot's trial ends, or ``timeout_s``."""
        self.ended.wait(timeout_s)

    def stop_all(self, err: BaseException) -> None:
        """Stop every running trial (its process terminated, the trial failed) and wait."""
        interrupt = err if isinstance(err, KeyboardInterrupt) else KeyboardInterrupt(
            f"the worker's {type(err).__name__}: {err}")
        for slot in self.busy():
            slot.stop.request(type(interrupt)(*interrupt.args))
        for slot in self.busy():
            assert slot.thread is not None
            slot.thread.join()
            slot.thread = None
