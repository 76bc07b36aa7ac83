"""Synthetic OCT data: one phantom volume per class (``phantom``) and a whole phantom data set
written to disk in any supported format (``writer``).
"""

from __future__ import annotations

from octtrain.synthetic.phantom import LesionParams
from octtrain.synthetic.writer import FORMATS, make_synthetic

__all__ = [
    "FORMATS",
    "LesionParams",
    "make_synthetic",
]
