"""What a run shows while it trains: progress bars on stderr, one line per epoch on stdout.

On a terminal a bar redraws one line (at most 10 times a second); elsewhere (CI logs, pipes, a
search's trial log) it prints one line a minute at most (:data:`PIPED_LINE_S`: ``desc: n/total
batches, elapsed``), so a long epoch shows it is alive, and logs get no flood.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

PIPED_LINE_S = 60.0  # off a terminal: at most one progress line this often


class ProgressBar:
    def __init__(self, total: int, desc: str, *, enabled: bool = True, stream: TextIO | None = None,
                 piped_line_s: float = PIPED_LINE_S):
        self.total = max(0, total)
        self.desc = desc
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.n = 0
        self.start = time.monotonic()
        self._last_draw = 0.0
        self.postfix = ""
        self.piped_line_s = piped_line_s
        self._last_line = self.start

    def update(self, n: int = 1, postfix: str | None = None) -> None:
        self.n += n
        if postfix is not None:
            self.postfix = postfix
        if self.tty and (time.monotonic() - self._last_draw > 0.1 or self.n >= self.total):
            self._draw()
        elif self.enabled and not self.tty and self.n < self.total:
            now = time.monotonic()
            if now - self._last_line >= self.piped_line_s:
                self._last_line = now
                minutes, secs = divmod(int(now - self.start), 60)
                self.stream.write(f"{self.desc}: {self.n}/{self.total} batches, "
                                  f"{minutes} min {secs:02d} s {self.postfix}".rstrip() + "\n")
                self.stream.flush()

    def _draw(self) -> None:
        self._last_draw = time.monotonic()
        frac = self.n / self.total if self.total else 1.0
        width = 24
        filled = int(width * frac)
        elapsed = self._last_draw - self.start
        bar = "#" * filled + "-" * (width - filled)
        line = f"\r{self.desc} [{bar}] {self.n}/{self.total} {elapsed:5.1f}s {self.postfix}"
        self.stream.write(line[:200])
        self.stream.flush()

    def close(self, summary: str | None = None) -> None:
        """End the bar; print ``summary`` (if any) as the line that stays."""
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r\033[K")
        if summary:
            self.stream.write(summary + "\n")
        self.stream.flush()


def epoch_line(m: dict[str, Any], epochs: int, key: str, is_best: bool) -> str:
    """One epoch's metrics ``m`` as the line a run prints; ``key`` is the selection metric."""
    share = m["val/max_class_share"]
    return (
        f"epoch {m['epoch'] + 1:>3}/{epochs}  "
        f"train loss {m['train/loss']:.4f} bal_acc {m['train/balanced_accuracy']:.3f} | "
        f"val loss {m['val/loss']:.4f} acc {m['val/accuracy']:.3f} "
        f"bal_acc {m['val/balanced_accuracy']:.3f} f1 {m['val/macro_f1']:.3f} "
        f"top-class {share:.0%} (class {m['val/majority_class']})  "
        f"{m['epoch_s']:.1f}s (io {m['io/load_s']:.1f}s, stall {m.get('io/stall_share', 0.0):.0%})"
        f"{'  encoder on' if m['encoder_trainable'] else ''}"
        f"{'  xla compiles ' + str(m['xla/compiles']) if 'xla/compiles' in m else ''}"
        f"{'  *best ' + key if is_best else ''}"
        f"{chr(10) + startup_line(m) if 'startup/total_s' in m else ''}"
    )


def early_stopping_line(key: str, patience: int) -> str:
    return f"early stopping: no {key} improvement for {patience} epochs"


def startup_line(metrics: dict[str, Any]) -> str:
    """``startup 4.1s: imports 2.0s, data 0.9s, model 0.7s, first_step 0.5s``."""
    parts = [f"{key[len('startup/'):-2]} {value:.1f}s" for key, value in metrics.items()
             if key.startswith("startup/") and key != "startup/total_s"]
    return f"startup {metrics.get('startup/total_s', 0.0):.1f}s: {', '.join(parts)}"
