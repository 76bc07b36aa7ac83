"""Bring a volume to a fixed ``(T, H, W)`` in ``[0, 1]``.

Fixed shapes matter twice: the encoder's RoPE is built for one input size, and on XLA every
new shape is a recompile. Preprocessing a full-size OCT volume (e.g. 128 × 496 × 512) costs
far more than a training step on a 16 × 64 × 64 input, so it is done once per data set and
parameter set: :mod:`octtrain.data.consolidated` stores the results in one memory-mapped array
that later epochs and other processes read (its key is built from :func:`source_stamp`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from octtrain.data import formats, readers


def clip_and_scale(volume: np.ndarray, clip_percentiles: Sequence[float]) -> np.ndarray:
    """Clip to the ``(low, high)`` percentiles of the volume and scale that range to ``[0, 1]``.

    Percentiles are taken over the finite values only. NaN becomes 0 (the low end), +inf 1 and
    -inf 0. A volume whose clipped range is empty (constant, or no finite values) becomes all
    zeros rather than NaN, because a division by zero would poison the whole batch.
    """
    lo_pct, hi_pct = clip_percentiles
    data = np.asarray(volume, dtype=np.float32)
    finite = np.isfinite(data)
    if not finite.any():
        return np.zeros(data.shape, dtype=np.float32)
    values = data if finite.all() else data[finite]
    lo, hi = (float(v) for v in np.percentile(values, [lo_pct, hi_pct]))
    if hi <= lo:
        return np.zeros(data.shape, dtype=np.float32)
    data = np.nan_to_num(data, nan=lo, posinf=hi, neginf=lo)
    out = (np.clip(data, lo, hi) - lo) / (hi - lo)
    return out.astype(np.float32, copy=False)


def replace_nonfinite(volume: np.ndarray) -> int:
    """Set every NaN and ±inf of ``volume`` to 0, in place; returns how many there were."""
    bad = ~np.isfinite(volume)
    count = int(np.count_nonzero(bad))
    if count:
        volume[bad] = 0.0
    return count


def resample(volume: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize ``(D, H0, W0)`` to ``shape = (T, H, W)``: area-average where an axis shrinks,
    trilinear where it grows.

    Plain trilinear interpolation reads only the 2 nearest samples per axis, so shrinking a
    496-row B-scan to 64 rows would sample every ~8th row and alias the speckle (and can skip a
    thin lesion entirely). Averaging first (``adaptive_avg_pool3d``, which also handles
    non-integer ratios) keeps every input sample's contribution; trilinear
    (``align_corners=False``) then upsamples axes that are too short, e.g. a single B-scan
    becomes ``T`` identical frames. An input already of ``shape`` is returned unchanged.
    """
    import torch  # here: the helpers below serve a search worker's pre-flight, without torch
    import torch.nn.functional as F

    t, h, w = (int(s) for s in shape)
    target = (t, h, w)
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    d0, h0, w0 = x.shape[2:]
    size = (d0, h0, w0)
    pooled = (min(d0, t), min(h0, h), min(w0, w))
    if pooled != size:
        x = F.adaptive_avg_pool3d(x, pooled)
    if pooled != target:
        x = F.interpolate(x, size=target, mode="trilinear", align_corners=False)
    return x[0, 0].numpy()  # (T, H, W)


def preprocess(
    volume: np.ndarray, shape: Sequence[int], clip_percentiles: Sequence[float]
) -> np.ndarray:
    """A raw ``(D, H0, W0)`` volume as float32 ``(T, H, W)`` in ``[0, 1]``.

    Intensity is clipped and scaled on the full-resolution volume (percentiles of the real
    speckle distribution), then resampled; averaging keeps values within ``[0, 1]``.
    """
    if volume.ndim != 3:
        raise ValueError(f"expected a (D, H, W) volume, got shape {volume.shape}")
    return resample(clip_and_scale(volume, clip_percentiles), shape)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/octtrain``, or ``~/.cache/octtrain`` when the variable is unset/empty."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "octtrain"


def source_stamp(path: Path) -> list[list[object]]:
    """What identifies the content of a source without reading it: ``(name, size, mtime_ns)``.

    For a directory of B-scans, the directory's own mtime changes only when files are added or
    removed, so every image file's stamp is included and an edited B-scan is noticed too.
    One volume of an E2E file (``a.e2e#volume=1``) is stamped by its file.
    """
    path = formats.split_selector(path)[0]
    if path.is_dir():
        files = sorted(
            f for f in path.iterdir()
            if f.is_file() and f.suffix.lower() in readers.IMAGE_SUFFIXES
        )
    else:
        files = [path]
    stamp: list[list[object]] = []
    for f in files:
        st = f.stat()
        stamp.append([f.name, st.st_size, st.st_mtime_ns])
    return stamp
