"""A run directory's file names, and where a run goes without one: what ``octtrain train`` and a
search worker need to know about a run without loading torch.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

RESUME_FILE = "resume.pt"  # the name octtrain train uses in its run directory
RUN_FILES = ("config.yaml", "class_to_idx.json", "metrics.jsonl", "best.pt", "last.pt",
             RESUME_FILE)  # fit writes (resume.pt: octtrain train's resume checkpoint)


def run_files_in(out_dir: str | Path) -> list[str]:
    """The files of a run already in ``out_dir`` (:data:`RUN_FILES`); empty: no run there."""
    return [name for name in RUN_FILES if (Path(out_dir) / name).exists()]


def default_run_dir() -> Path:
    """``runs/<timestamp>-<random>``: where a run goes without an ``out_dir``."""
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
