"""The startup cost of a run: from the start of its process to its first optimizer step.

A search pays it once per trial, so it decides how short a useful trial can be. It is split
into the phases a trial goes through:

* ``startup/imports_s``: process start to :func:`octtrain.fit` (interpreter, imports of torch,
  transformers and, in a trial process, the search's own set-up); Linux only, from
  ``/proc/self/stat`` (absent elsewhere);
* ``startup/data_s``: indexing, splitting, mapping (or building) the consolidated data set,
  the blank-volume pass and the loaders;
* ``startup/model_s``: the memory check, the encoder (random init, or weights from disk) and
  the optimizer;
* ``startup/first_step_s``: from there to the end of the first optimizer step (loader start,
  the first micro-batches' forward and backward). On XLA the step is traced here and compiled
  at the graph cut that follows: that compilation is in ``startup/compile_s``, the XLA compile
  time of the first epoch (its training and validation graphs);
* ``startup/total_s``: their sum.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch


def process_age_s() -> float | None:
    """Seconds since this process started (Linux ``/proc``), or None where that is unknown."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


@dataclass
class StartupClock:
    """Phase durations of one rank's start, measured with ``time.monotonic``."""

    imports_s: float | None = field(default_factory=process_age_s)
    last: float = field(default_factory=time.monotonic)
    phases: dict[str, float] = field(default_factory=dict)

    def mark(self, phase: str) -> None:
        """End ``phase`` now: its duration is the time since the previous mark."""
        now = time.monotonic()
        self.phases[phase] = now - self.last
        self.last = now

    def watch_first_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Mark ``first_step`` when ``optimizer`` finishes its first step (a post-step hook that
        removes itself)."""
        def hook(*_: object) -> None:
            self.mark("first_step")
            handle.remove()

        handle = optimizer.register_step_post_hook(hook)

    def metrics(self, compile_s: float | None) -> dict[str, float]:
        """The ``startup/...`` metrics (see the module docstring)."""
        out = {f"startup/{name}_s": value for name, value in self.phases.items()}
        if self.imports_s is not None:
            out["startup/imports_s"] = self.imports_s
        if compile_s is not None:
            out["startup/compile_s"] = compile_s
        out["startup/total_s"] = sum(out.values())
        return out

