"""What of a trial process's output the worker echoes: every line, except a block it has already
shown for an earlier trial of this worker. The trainer prints the table of volumes per class and
split at every start (:func:`octtrain.data.classes.class_table`); in a search every trial has the
same one, so the worker shows it once and then one line saying it is unchanged. A different
table (another split or data set) is shown again. ``trial.log`` always gets every line.
"""

from __future__ import annotations

import threading
from typing import TextIO

# a repeated block: the line that opens it → how its last line starts
BLOCKS = {"volumes per class and split": "total"}
MAX_BLOCK_LINES = 256  # a block longer than this is echoed as it is


class Echo:
    """The worker's echo of one trial process (``write`` one line at a time, from one thread),
    sharing what was shown with the worker's other trials."""

    _shown: set[str] = set()
    _lock = threading.Lock()

    def __init__(self, out: TextIO, prefix: str) -> None:
        self.out, self.prefix = out, prefix
        self._block: list[str] = []
        self._start = self._end = ""

    def write(self, line: str) -> None:
        if not self._block:
            self._start, self._end = next(((start, end) for start, end in BLOCKS.items()
                                           if line.startswith(start)), ("", ""))
            if not self._end:
                self._emit([line])
                return
        self._block.append(line)
        if line.startswith(self._end) or len(self._block) >= MAX_BLOCK_LINES:
            self._close()

    def close(self) -> None:
        """The process ended: echo an unfinished block as it is."""
        if self._block:
            self._emit(self._block)
            self._block = []

    def _close(self) -> None:
        text = "".join(self._block)
        with self._lock:
            seen = text in self._shown
            self._shown.add(text)
        self._emit([f"{self._start}: as shown for an earlier trial\n"] if seen else self._block)
        self._block = []

    def _emit(self, lines: list[str]) -> None:
        for line in lines:
            self.out.write(self.prefix + line)
        self.out.flush()
