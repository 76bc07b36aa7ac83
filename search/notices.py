"""One line of progress or warning on a worker's output: ``octsearch: TEXT``, flushed at once
(workers on many hosts interleave their logs; a line held in a buffer is a line lost on a kill)."""

from __future__ import annotations

from typing import TextIO


def notice(out: TextIO | None, text: str) -> None:
    """``octsearch: TEXT`` as one line on ``out``; nothing when ``out`` is None."""
    if out is not None:
        out.write(f"octsearch: {text}\n")
        out.flush()
