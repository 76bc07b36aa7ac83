"""Read one OCT volume from disk as a float32 ``(D, H, W)`` array.

Axis convention everywhere in :mod:`octtrain`: ``D`` = B-scans (the slow scan axis, which
becomes the video's frame axis), ``H`` = rows of a B-scan (axial depth into the tissue, row 0
at the top), ``W`` = columns of a B-scan (lateral).

Formats, chosen by suffix (a directory is a stack of B-scan images):

======================  ===================================================================
``.npy``                the array as saved
``.npz``                the only array in the archive, or the one named ``volume``
``.nii`` / ``.nii.gz``  NIfTI, stored ``(x, y, z)`` = (lateral, axial, B-scan) as written by
                        most OCT converters, i.e. ``(W, H, D)``: transposed to ``(D, H, W)``.
                        Trailing singleton axes (``(W, H, D, 1)``) are dropped.
``.tif`` / ``.tiff``    multi-page TIFF, one page per B-scan
``.dcm``                DICOM (e.g. Ophthalmic Tomography), ``pixel_array`` = (frames, rows,
                        cols); a single-frame file is 2-D
directory               B-scan images (png, jpg, jpeg, tif, tiff, bmp) sorted *naturally*
                        by name (``b2.png`` before ``b10.png``); other files are ignored
``.vol`` ``.e2e``       Heidelberg, HEYEX XML, Topcon and Duke files, read through eyepy:
``.xml`` ``.fda``       :mod:`octtrain.data.formats` (its intensity transforms and the
``.mat``                ``scan.e2e#volume=K`` selector of one volume of an E2E file)
======================  ===================================================================

A 2-D array is refused unless ``allow_single_bscan`` (``data.allow_single_bscan``), because a
volume saved without its depth axis would otherwise train silently as one B-scan; when
allowed it is one B-scan (``D = 1``). Colour images (RGB/RGBA/palette, or TIFF/DICOM with
samples per pixel) become luminance (ITU-R 601-2: ``0.299 R + 0.587 G + 0.114 B``), because
OCT is grayscale and a colour export only repeats the gray value or adds an overlay.
Values are returned as stored (no scaling): :mod:`octtrain.data.preprocess` normalises them.
A volume holding NaN or ±infinity is refused: it would silently become a blank volume.

Every failure (missing, corrupt, unreadable, empty, wrong rank, non-finite values, unknown
suffix) raises
:class:`~octtrain.errors.DataError` whose one-line message names the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from octtrain.data import formats
from octtrain.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
VOLUME_SUFFIXES = (".npy", ".npz", ".nii", ".nii.gz", ".tif", ".tiff", ".dcm", *formats.EYEPY_SUFFIXES)
SUPPORTED = (*VOLUME_SUFFIXES, "a directory of B-scan images")

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def volume_suffix(path: str | os.PathLike[str]) -> str:
    """The format-defining suffix, lower-cased; ``.nii.gz`` counts as one suffix, and an E2E
    volume selector does not count (``a.e2e#volume=1`` → ``.e2e``)."""
    name = formats.split_selector(path)[0].name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def volume_stem(path: str | os.PathLike[str]) -> str:
    """The file name without its volume suffix (``a.nii.gz`` → ``a``; a directory: its name;
    ``a.e2e#volume=1`` → ``a``)."""
    p = formats.split_selector(path)[0]
    suffix = volume_suffix(p)
    if suffix in VOLUME_SUFFIXES:
        return p.name[: len(p.name) - len(suffix)]
    return p.name


def is_volume_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks readable by :func:`read_volume` (by suffix, or a directory)."""
    return Path(path).is_dir() or volume_suffix(path) in VOLUME_SUFFIXES


def natural_key(name: str) -> list[str | int]:
    """Sort key that orders embedded numbers by value: ``b2`` < ``b10``; case-insensitive.

    ``re.split`` with a capture group alternates text and digits, so equal positions always
    hold the same type and lists of keys compare without a ``TypeError``.
    """
    parts = re.split(r"(\d+)", name.lower())
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def to_luminance(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3 or 4)`` colour → ``(...)`` gray (alpha is ignored)."""
    return rgb[..., :3].astype(np.float32) @ _LUMA


def as_volume(array: np.ndarray, path: str | os.PathLike[str], *,
              allow_single_bscan: bool = False, check_finite: bool = True) -> np.ndarray:
    """A 3-D numeric array (or, with ``allow_single_bscan``, a 2-D one) of finite values as
    float32 ``(D, H, W)``; anything else is a DataError naming ``path``. ``check_finite=False``
    lets NaN/inf through, for a caller that replaces them (``data.nonfinite: replace``)."""
    if array.dtype.kind not in "biuf":
        raise DataError(f"{path}: volume has non-numeric dtype {array.dtype}")
    if array.ndim == 2 and not allow_single_bscan:
        raise DataError(f"{path}: 2-D array of shape {array.shape} is one B-scan, not a "
                        "(D, H, W) volume; set data.allow_single_bscan: true to train on it")
    if array.ndim == 2:
        array = array[None]  # one B-scan: (1, H, W)
    if array.ndim != 3:
        raise DataError(f"{path}: expected a 3-D (D, H, W) volume, got shape {array.shape}")
    if array.size == 0:
        raise DataError(f"{path}: volume is empty (shape {array.shape})")
    with np.errstate(over="ignore"):  # an overflow is reported below as infinite
        volume = np.ascontiguousarray(array, dtype=np.float32)
    if check_finite and array.dtype.kind == "f":  # float64 beyond float32's range: inf too
        bad = int(np.count_nonzero(~np.isfinite(volume)))
        if bad:
            raise DataError(f"{path}: volume holds {bad} NaN or infinite value(s) of "
                            f"{volume.size}")
    return volume


def _read_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _read_npz(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        keys = list(archive.keys())
        if len(keys) == 1:
            return archive[keys[0]]
        if "volume" in keys:
            return archive["volume"]
    raise DataError(f"{path}: .npz must hold one array or one named 'volume', got keys {keys}")


def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    image = nib.load(str(path))
    if not isinstance(image, nib.spatialimages.SpatialImage):
        raise DataError(f"{path}: not a NIfTI image ({type(image).__name__})")
    data = np.asanyarray(image.dataobj)  # applies scl_slope/inter when set
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    # NIfTI stores (x=lateral, y=axial, z=B-scan) = (W, H, D); a 2-D image is (W, H).
    return data.T


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise DataError(f"{path}: TIFF has no images")
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
    if "S" in axes and data.shape[axes.index("S")] in (3, 4):
        data = to_luminance(np.moveaxis(data, axes.index("S"), -1))
    return data


def _read_dicom(path: Path) -> np.ndarray:
    import pydicom

    ds = pydicom.dcmread(path)
    data = ds.pixel_array  # (frames, rows, cols[, samples]) or (rows, cols[, samples])
    if int(ds.get("SamplesPerPixel", 1)) > 1:
        data = to_luminance(data)
    return data


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        gray: Image.Image = image
        if image.mode not in ("L", "I", "I;16", "I;16B", "I;16L", "F", "1"):
            # RGB, RGBA, LA, P (palette), CMYK, ...: OCT is grayscale, take the luminance.
            gray = image.convert("L")
        data = np.asarray(gray)
    if data.ndim != 2:
        raise DataError(f"{path}: expected a 2-D grayscale B-scan, got shape {data.shape}")
    return data


def _read_directory(path: Path) -> np.ndarray:
    files = sorted(
        (f for f in path.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
         and not f.name.startswith(".")),
        key=lambda f: natural_key(f.name),
    )
    if not files:
        raise DataError(
            f"{path}: directory holds no B-scan images ({', '.join(IMAGE_SUFFIXES)})"
        )
    scans = []
    for f in files:
        scans.append(_call(_read_image, f))
        if scans[-1].shape != scans[0].shape:
            raise DataError(
                f"{f}: B-scan shape {scans[-1].shape} differs from {files[0].name} "
                f"{scans[0].shape} in {path}"
            )
    return np.stack(scans)  # (D, H, W)


_READERS: dict[str, Callable[[Path], np.ndarray]] = {
    ".npy": _read_npy,
    ".npz": _read_npz,
    ".nii": _read_nifti,
    ".nii.gz": _read_nifti,
    ".tif": _read_tiff,
    ".tiff": _read_tiff,
    ".dcm": _read_dicom,
    **formats.READERS,
}


def _call(reader: Callable[[Path], np.ndarray], path: Path) -> np.ndarray:
    """Run a format reader; any library error becomes a one-line DataError naming the file."""
    try:
        return reader(path)
    except DataError:
        raise
    except Exception as err:
        # Each library has its own error types (TiffFileError, InvalidDicomError,
        # ImageFileError, UnidentifiedImageError, BadZipFile...): all mean "cannot read this".
        detail = " ".join(str(err).split()) or "no detail"
        raise DataError(f"{path}: cannot read volume ({type(err).__name__}: {detail})") from err


def read_volume(path: str | os.PathLike[str], *, allow_single_bscan: bool = False,
                check_finite: bool = True) -> np.ndarray:
    """Read one volume as float32 ``(D, H, W)``; see the module docstring for formats.

    Raises DataError (naming ``path``) for a missing, corrupt, empty, wrong-rank (2-D unless
    ``allow_single_bscan``) or non-finite volume and for an unknown suffix (listing the
    supported formats).
    """
    p = Path(path)
    if not formats.split_selector(p)[0].exists():
        raise DataError(f"{p}: volume not found")
    if p.is_dir():
        data = _read_directory(p)
    else:
        suffix = volume_suffix(p)
        reader = _READERS.get(suffix)
        if reader is None:
            raise DataError(
                f"{p}: unknown volume format {suffix or '(no suffix)'!r}; supported: "
                f"{', '.join(SUPPORTED)}"
            )
        data = _call(reader, p)
    return as_volume(np.asarray(data), p, allow_single_bscan=allow_single_bscan,
                     check_finite=check_finite)
