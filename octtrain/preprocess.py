"""Bring a volume to a fixed ``(T, H, W)`` in ``[0, 1]``, once, and keep the result on disk.

Fixed shapes matter twice: the encoder's RoPE is built for one input size, and on XLA every
new shape is a recompile. Preprocessing a full-size OCT volume (e.g. 128 × 496 × 512) costs
far more than a training step on a 16 × 64 × 64 input, so :class:`VolumeCache` does it once per
source file and parameter set and later epochs (and other processes) read a small ``.npy``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from octtrain import readers
from octtrain.errors import DataError

# Bump when preprocess() changes its output for the same inputs: old cache entries then miss.
FORMAT_VERSION = 1


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


NONFINITE_SUFFIX = ".nonfinite"  # beside a cache entry whose source held NaN/inf (replaced)


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
    """
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


def cache_key(
    path: str | os.PathLike[str], shape: Sequence[int], clip_percentiles: Sequence[float],
    replace_nonfinite: bool = False,
) -> str:
    """Hex digest of (absolute source path, its size/mtime stamps, shape, clip, FORMAT_VERSION,
    and ``data.nonfinite: replace`` where set: a replaced volume is never served to a run that
    refuses non-finite volumes).

    Changing any of them gives a new key, so a stale entry is never served; the old file just
    stays unused in the cache directory.
    """
    src = Path(path).absolute()
    try:
        stamp = source_stamp(src)
    except OSError as err:
        raise DataError(f"{src}: volume not found or not readable ({err.strerror})") from None
    ident = {
        "path": str(src),
        "stamp": stamp,
        "shape": [int(s) for s in shape],
        "clip": [float(c) for c in clip_percentiles],
        "version": FORMAT_VERSION,
    }
    if replace_nonfinite:
        ident["nonfinite"] = "replace"
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` so readers see either nothing or the complete file.

    The data goes to a temporary file in the same directory (same filesystem) and is then
    renamed over ``path`` with ``os.replace``, which is atomic on POSIX and Windows. Several
    processes building the same entry at once each write their own temp file; the last rename
    wins and every version is complete and identical.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class VolumeCache:
    """Read + preprocess each source volume once; later calls load the cached ``.npy``.

    ``cache_dir=None`` uses :func:`default_cache_dir`. The entry name is
    ``<source stem>-<cache_key[:32]>.npy``. An entry that cannot be loaded or has the wrong
    shape/dtype (truncated by a crash of an older writer, disk trouble, manual edits) is
    rebuilt from the source instead of failing the run.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None,
        shape: Sequence[int],
        clip_percentiles: Sequence[float],
        allow_single_bscan: bool = False,
        replace_nonfinite: bool = False,
    ) -> None:
        self.allow_single_bscan = allow_single_bscan  # read_volume's; not in the key: same output
        self.replace_nonfinite = replace_nonfinite  # data.nonfinite: replace (NaN/inf become 0)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.shape = tuple(int(s) for s in shape)
        self.clip_percentiles = (float(clip_percentiles[0]), float(clip_percentiles[1]))
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be (T, H, W) with positive sizes, got {shape!r}")
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(
                f"{self.cache_dir}: cannot create the preprocessing cache directory "
                f"({err.strerror}); set data.cache_dir to a writable folder"
            ) from None

    def entry_path(self, path: str | os.PathLike[str]) -> Path:
        """Where the preprocessed version of ``path`` is (or would be) stored."""
        key = cache_key(path, self.shape, self.clip_percentiles, self.replace_nonfinite)
        stem = readers.volume_stem(path)[:40]
        return self.cache_dir / f"{stem}-{key[:32]}.npy"

    def _load_entry(self, entry: Path) -> np.ndarray | None:
        """The cached array, or None when missing or unusable (then the caller rebuilds it)."""
        try:
            array = np.load(entry, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        if array.shape != self.shape or array.dtype != np.float32:
            return None
        return array

    def is_blank(self, path: str | os.PathLike[str]) -> bool:
        """Whether the preprocessed volume at ``path`` is all zeros (a constant source), building
        its entry if needed. The answer is kept beside the entry as an empty ``.blank`` or
        ``.filled`` file, so a warm cache answers without reading the volume again: every trial
        asks this of every volume before its first epoch."""
        entry = self.entry_path(path)
        for suffix, blank in ((".blank", True), (".filled", False)):
            if entry.with_suffix(suffix).exists():
                return blank
        blank = not self.load(path).any()
        # The entry itself was written, so a marker that cannot be only costs a load next time.
        with contextlib.suppress(OSError):
            entry.with_suffix(".blank" if blank else ".filled").touch()
        return blank

    def load(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Float32 ``(T, H, W)`` in ``[0, 1]`` for the volume at ``path``."""
        entry = self.entry_path(path)
        cached = self._load_entry(entry)
        if cached is not None:
            return cached
        # Through the module attribute on purpose: tests count these calls to prove that a
        # second epoch is served from the cache.
        volume = readers.read_volume(path, allow_single_bscan=self.allow_single_bscan,
                                     check_finite=not self.replace_nonfinite)
        replaced = replace_nonfinite(volume) if self.replace_nonfinite else 0
        out = preprocess(volume, self.shape, self.clip_percentiles)
        try:
            atomic_save_npy(entry, out)
            if replaced:
                entry.with_suffix(NONFINITE_SUFFIX).touch()
        except OSError as err:
            raise DataError(
                f"{entry}: cannot write the preprocessing cache ({err.strerror}); "
                "set data.cache_dir to a writable folder"
            ) from None
        return out

    def was_replaced(self, path: str | os.PathLike[str]) -> bool:
        """Whether NaN/inf values of the volume at ``path`` were replaced by 0 when its entry
        was built (``data.nonfinite: replace``), building the entry if needed."""
        if not self.replace_nonfinite:
            return False
        self.load(path)
        return self.entry_path(path).with_suffix(NONFINITE_SUFFIX).exists()
