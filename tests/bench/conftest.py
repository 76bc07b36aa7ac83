"""The bench scripts are scripts, not a package: their directory goes on ``sys.path`` here."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
