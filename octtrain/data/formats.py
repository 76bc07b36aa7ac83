"""OCT device and data-set formats, read through eyepy into the ``(D, H, W)`` convention of
:mod:`octtrain.data.readers` (which dispatches here by suffix).

=================  ============================================================================
``.vol``           Heidelberg HEYEX VOL export: eyepy's ``import_heyex_vol``. The file stores
                   float32 reflectivity; eyepy's ``vol`` display transform makes it uint8
                   ``img_as_ubyte(clip((log(raw + 2.44e-4) + 8.3) / 8.285, 0, 1))``, with the
                   empty marker (float32 max) as 0. Those 0..255 values are what is returned.
``.e2e``           Heidelberg E2E: eyepy's ``HeE2eReader``, its ``e2e`` display transform (the
                   same log curve; values above 1.99 are empty regions, 0). A file with several
                   OCT volumes is refused unless one is chosen: ``scan.e2e#volume=K`` (K from 0,
                   in eyepy's series order).
``.xml``           HEYEX XML export (the ``.xml`` plus the B-scan images it names): eyepy's
                   ``import_heyex_xml``, the images as stored (first channel, uint8).
``.fda``           Topcon FDA: eyepy's ``import_topcon_fda`` (oct-converter underneath, the
                   ``fda`` extra), as stored.
``.mat``           Duke SD-OCT layout (``images`` of shape ``(rows, columns, B-scans)``): as
                   eyepy's ``import_duke_mat`` moves the last axis first; read with scipy alone,
                   so a file without ``layerMaps``/``Age`` is read too.
=================  ============================================================================

B-scans stay in the order the file stores them (eyepy does not sort them by position); a row is
an A-scan depth from the top of the B-scan, a column a lateral position, as stored (left eyes are
not mirrored). Every failure is a :class:`~octtrain.errors.DataError` naming the file; eyepy's
own log lines (e.g. "less layers than expected") are kept off the terminal while it reads.

:func:`header_info` gives the patient id and laterality that HEYEX files carry, for a manifest
that lacks them (``octtrain index``, and empty ``patient_id`` cells of a manifest).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from octtrain.errors import DataError, one_line, optional_import

EYEPY_SUFFIXES = (".vol", ".e2e", ".xml", ".fda", ".mat")
HEADER_SUFFIXES = (".vol", ".e2e", ".xml")  # formats whose header names the patient and eye
FORMATS_EXTRA = "formats"
FDA_EXTRA = "fda"
_SELECTOR = re.compile(r"^(?P<file>.+\.e2e)#volume=(?P<index>\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class HeaderInfo:
    """What a file's header says about the scan: ``None`` where it says nothing."""

    patient_id: str | None
    laterality: str | None  # "OD" (right eye) or "OS" (left eye)


def split_selector(path: str | os.PathLike[str]) -> tuple[Path, int | None]:
    """``scan.e2e#volume=2`` → ``(Path("scan.e2e"), 2)``; any other path → ``(path, None)``."""
    match = _SELECTOR.match(os.fspath(path))
    if match is None:
        return Path(path), None
    return Path(match["file"]), int(match["index"])


def normalize_laterality(value: object) -> str | None:
    """``OD``/``R``/``right`` → ``"OD"``, ``OS``/``L``/``left`` → ``"OS"``, else None.

    ``82``/``76`` (ASCII ``R``/``L``) too: eyepy 0.21 gives an E2E volume's laterality as
    ``str()`` of its ``LateralityEnum``, an IntEnum, which Python >= 3.11 prints as the number.
    """
    text = str(value or "").strip().strip("\x00").upper()
    if text in ("OD", "R", "RIGHT", "82"):
        return "OD"
    if text in ("OS", "L", "LEFT", "76"):
        return "OS"
    return None


@contextlib.contextmanager
def _quiet_eyepy() -> Iterator[None]:
    """eyepy logs warnings per file (a layer count, a missing meta field) through the root
    logger's last-resort handler, i.e. onto stderr of every training run: raise its level while
    it reads, restore it after."""
    logger = logging.getLogger("eyepy")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _eyepy(path: Path, module: str = "eyepy") -> Any:
    return optional_import(module, FORMATS_EXTRA, f"{path}: reading {path.suffix.lower()} files")


# ---------------------------------------------------------------------------------------------
# Heidelberg VOL
# ---------------------------------------------------------------------------------------------


def _vol_header(path: Path) -> Any:
    """The fixed file header of a .vol, parsed with eyepy's ``vol_format`` fields up to the
    localizer (about 2 KB read, not the B-scans)."""
    cs = _eyepy(path, "construct")
    vol_reader = _eyepy(path, "eyepy.io.he.vol_reader")
    fields = vol_reader.vol_format.subcons
    header = cs.Struct(*fields[: [f.name for f in fields].index("localizer")])
    with path.open("rb") as f:
        try:
            parsed = header.parse_stream(f)
        except cs.ConstructError as err:
            raise DataError(f"{path}: truncated or not a HEYEX .vol (header: "
                            f"{type(err).__name__}: {one_line(err)})") from None
    parsed.header_size = header.sizeof()
    return parsed


def _check_vol_size(path: Path, header: Any) -> None:
    """A file shorter than its header's localizer + B-scans is truncated (longer is allowed:
    HEYEX appends thickness grids)."""
    bscan = header.bscan_hdr_size + header.size_x * header.size_y * 4
    expected = header.header_size + header.size_x_slo * header.size_y_slo + header.n_bscans * bscan
    size = path.stat().st_size
    if size < expected:
        raise DataError(f"{path}: truncated HEYEX .vol: {size} bytes, its header describes "
                        f"{expected} ({header.n_bscans} B-scans of {header.size_y} x "
                        f"{header.size_x}, localizer {header.size_y_slo} x {header.size_x_slo})")


def read_heyex_vol(path: Path) -> np.ndarray:
    """A HEYEX .vol as uint8 ``(D, H, W)`` display values (eyepy's ``vol`` transform)."""
    _check_vol_size(path, _vol_header(path))
    eyepy = _eyepy(path)
    with _quiet_eyepy():
        return np.asarray(eyepy.import_heyex_vol(path).data)


# ---------------------------------------------------------------------------------------------
# Heidelberg E2E, HEYEX XML, Topcon FDA: read through eyepy; no library here writes them
# ---------------------------------------------------------------------------------------------


def _e2e_volumes(file: Path) -> list[Any]:
    """The EyeVolumes of an E2E file: the series eyepy can build a volume from, in its order."""
    he = _eyepy(file, "eyepy.io.he")
    with _quiet_eyepy(), he.HeE2eReader(file) as reader:
        volumes = list(reader.volumes)
    if not volumes:
        raise DataError(f"{file}: E2E file holds no OCT volume eyepy can read")
    return volumes


def e2e_volume_count(path: Path) -> int:
    """How many OCT volumes an E2E file holds (``#volume=K`` takes K in ``0..count-1``)."""
    return len(_e2e_volumes(split_selector(path)[0]))


def _e2e_volume(path: Path) -> Any:
    """The chosen (or only) EyeVolume of an E2E file; ``path`` may carry ``#volume=K``."""
    file, index = split_selector(path)
    volumes = _e2e_volumes(file)
    if index is None:
        if len(volumes) > 1:
            raise DataError(f"{file}: E2E file holds {len(volumes)} OCT volumes; choose one as "
                            f"{file.name}#volume=K with K in 0..{len(volumes) - 1}")
        index = 0
    if index >= len(volumes):
        raise DataError(f"{path}: E2E file holds {len(volumes)} OCT volume(s); "
                        f"volume={index} is not one of 0..{len(volumes) - 1}")
    return volumes[index]


def read_heyex_e2e(path: Path) -> np.ndarray:
    """One OCT volume of a HEYEX .e2e as uint8 ``(D, H, W)`` (eyepy's ``e2e`` transform)."""
    with _quiet_eyepy():
        return np.asarray(_e2e_volume(path).data)


def read_heyex_xml(path: Path) -> np.ndarray:
    """A HEYEX XML export (the .xml beside its images) as ``(D, H, W)``."""
    eyepy = _eyepy(path)
    with _quiet_eyepy():
        return np.asarray(eyepy.import_heyex_xml(path).data)


def read_topcon_fda(path: Path) -> np.ndarray:
    """A Topcon .fda as ``(D, H, W)``, through eyepy and oct-converter."""
    eyepy = _eyepy(path)
    optional_import("oct_converter.readers", FDA_EXTRA, f"{path}: reading .fda files")
    with _quiet_eyepy():
        return np.asarray(eyepy.import_topcon_fda(path).data)


# ---------------------------------------------------------------------------------------------
# Duke .mat
# ---------------------------------------------------------------------------------------------

DUKE_KEY = "images"


def read_duke_mat(path: Path) -> np.ndarray:
    """The ``images`` array of a Duke-layout .mat, ``(rows, columns, B-scans)`` → ``(D, H, W)``
    (eyepy's ``import_duke_mat``: ``np.moveaxis(images, -1, 0)``)."""
    import scipy.io

    try:
        found = [name for name, _, _ in scipy.io.whosmat(path)]
        loaded = scipy.io.loadmat(path, variable_names=[DUKE_KEY])
    except NotImplementedError:  # scipy's answer to a v7.3 file
        raise DataError(f"{path}: MATLAB v7.3 (HDF5) .mat files are not read; save it with "
                        "save(..., '-v7')") from None
    if DUKE_KEY not in loaded:
        raise DataError(f"{path}: .mat holds no {DUKE_KEY!r} array (the Duke layout: "
                        f"rows x columns x B-scans); found {', '.join(found) or 'no arrays'}")
    images = np.asarray(loaded[DUKE_KEY])
    if images.ndim != 3:
        raise DataError(f"{path}: {DUKE_KEY!r} must be rows x columns x B-scans, got shape "
                        f"{images.shape}")
    return np.moveaxis(images, -1, 0)


READERS = {
    ".vol": read_heyex_vol,
    ".e2e": read_heyex_e2e,
    ".xml": read_heyex_xml,
    ".fda": read_topcon_fda,
    ".mat": read_duke_mat,
}


# ---------------------------------------------------------------------------------------------
# Headers: patient id and laterality
# ---------------------------------------------------------------------------------------------


def _clean_id(value: object) -> str | None:
    text = str(value or "").strip().strip("\x00").strip()
    return text or None


def header_info(path: str | os.PathLike[str]) -> HeaderInfo:
    """Patient id and laterality from a HEYEX header (.vol, .e2e, .xml); other formats and
    fields the header leaves empty give None. A file that cannot be read is a DataError."""
    file, _ = split_selector(path)
    suffix = file.suffix.lower()
    if suffix not in HEADER_SUFFIXES:
        return HeaderInfo(None, None)
    if not file.is_file():
        raise DataError(f"{file}: volume not found")
    try:
        if suffix == ".vol":
            header = _vol_header(file)
            return HeaderInfo(_clean_id(header.patient_id), normalize_laterality(header.scan_position))
        if suffix == ".xml":
            he = _eyepy(file, "eyepy.io.he")
            values = he.HeXmlReader(file).parsed_values
            return HeaderInfo(_clean_id(values.get("patient_id")),
                              normalize_laterality(values.get("scan_position")))
        volume = _e2e_volume(Path(path))
        patient = volume.meta["e2e_metadata"].get("Patient", {})
        return HeaderInfo(_clean_id(patient.get("Patient ID")), normalize_laterality(volume.laterality))
    except DataError:
        raise
    except Exception as err:  # eyepy's and construct's own errors: the header is unreadable
        raise DataError(f"{path}: cannot read the header ({type(err).__name__}: "
                        f"{one_line(err) or 'no detail'})") from err
