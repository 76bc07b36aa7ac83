"""Write a phantom as a Heidelberg HEYEX ``.vol`` built by eyepy's own layout definition.

The bytes come from ``eyepy.io.he.vol_reader.vol_format`` (a ``construct`` Struct of the HEYEX
VOL layout), never from a layout written here, so a file that eyepy's reader (and octtrain's,
which is eyepy's) reads back is a real-format file. eyepy 0.21's ``HeVolWriter`` cannot be used
as it stands; three of its faults are worked around here, and only here:

1. Dates: its date adapter's encoder parses an ISO *string* (``datetime.fromisoformat``) but the
   writer hands it ``datetime`` objects (TypeError); and for ``exam_time``, an unsigned 64-bit
   count of 100 ns ticks since 1601, the encoder returns a *float*, which ``Int64ul`` refuses.
   Here ``dob``/``visit_date`` (float days since 1899-12-30) get ISO strings, and ``exam_time``
   is the same ``Int64ul`` at the same offset given the integer tick count.
2. Layer segmentations: it writes 17 rows of segmentation under ``num_seg = len(bscan.layers)``
   (0 for a volume without layers), so the byte count disagrees with the header. Here
   ``num_seg`` is 0 with no rows and a B-scan header of exactly its 256 bytes.
3. Intensities: it converts display values to raw reflectivity with ``to_vol_intensity`` on
   ``float32`` 0..255 values, which ``img_as_float32`` does not rescale, so ``exp(255 * 8.285 -
   8.3)`` is inf. Here ``to_vol_intensity`` gets the uint8 volume, which it scales to [0, 1]
   first: eyepy's ``vol`` display transform then gives the uint8 values back exactly.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np

from octtrain.errors import DataError, optional_import

SCALE_X_MM = 0.0114  # a Spectralis-like A-scan spacing (only the metadata; nothing depends on it)
SCALE_Y_MM = 0.0039
DISTANCE_MM = 0.12
LOCALIZER = 16  # a blank 16 x 16 localizer: the phantoms have no fundus image
_EPOCH_1601 = datetime.datetime(1601, 1, 1)
_EXAM = datetime.datetime(2020, 1, 1)


def write_heyex_vol(path: Path, volume: np.ndarray, *, patient_id: str = "", laterality: str = "OD") -> Path:
    """Write a uint8 ``(D, H, W)`` volume as a HEYEX .vol (B-scan ``i`` is the file's ``i``-th);
    ``patient_id`` and ``laterality`` (``OD``/``OS``) go into the header."""
    if volume.dtype != np.uint8 or volume.ndim != 3:
        raise DataError(f"{path}: a .vol is written from a uint8 (D, H, W) volume, got "
                        f"{volume.dtype} of shape {volume.shape}")
    cs = optional_import("construct", "formats", f"{path}: writing a .vol file")
    vol_reader = optional_import("eyepy.io.he.vol_reader", "formats", f"{path}: writing a .vol file")
    from eyepy.core.utils import to_vol_intensity

    # Workaround 1: exam_time as the integer it is stored as (same type, same offset).
    layout = cs.Struct(*[("exam_time" / cs.Int64ul) if field.name == "exam_time" else field
                         for field in vol_reader.vol_format.subcons])
    ticks = int((_EXAM - _EPOCH_1601).total_seconds()) * 10**7
    depth, height, width = volume.shape
    # Workaround 3: uint8 in, so to_vol_intensity scales to [0, 1] before its exp.
    raw = np.asarray(to_vol_intensity(volume), dtype=np.float32)
    bscans = [
        dict(bscan_hdr_size=256,  # workaround 2: no segmentation rows, num_seg 0
             start_x=0.0, start_y=i * DISTANCE_MM, end_x=(width - 1) * SCALE_X_MM,
             end_y=i * DISTANCE_MM, num_seg=0, quality=0.0, shift=0, iv_transformation=[0.0] * 6,
             layer_segmentations=np.zeros((0, width), np.float32),
             data=np.ascontiguousarray(raw[i]))
        for i in range(depth)
    ]
    header = dict(
        size_x=width, n_bscans=depth, size_y=height, scale_x=SCALE_X_MM, distance=DISTANCE_MM,
        scale_y=SCALE_Y_MM, size_x_slo=LOCALIZER, size_y_slo=LOCALIZER,
        scale_x_slo=width * SCALE_X_MM / LOCALIZER, scale_y_slo=depth * DISTANCE_MM / LOCALIZER,
        field_size_slo=30, scan_focus=0.0, scan_position=laterality, exam_time=ticks,
        scan_pattern=3, bscan_hdr_size=256, id="1", reference_id="", pid=0,
        patient_id=patient_id[:23], dob="1950-01-01T00:00:00", vid=0, visit_id="",
        visit_date=_EXAM.isoformat(), grid_type=0, grid_offset=0, grid_type1=0, grid_offset1=0,
        prog_id="", localizer=np.zeros((LOCALIZER, LOCALIZER), np.uint8), bscans=bscans,
    )
    path.write_bytes(layout.build(header))
    return path
