"""``python -m search._trial_main REQUEST.json``: the process of one trial (see trial_process.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from search.trial_process import run_child

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m search._trial_main REQUEST.json")
    run_child(Path(sys.argv[1]))
