"""OCT-like phantom volumes with four classes: the data of every test and of the demo.

No real OCT can be downloaded here, so the phantoms imitate what matters for the Scenario-A
problem: a layered retina that looks alike in every class, small class-specific lesions, a
70/10/10/10 class imbalance, several volumes per patient, and the file formats real exports
come in.

Phantom, per B-scan (rows = axial depth, columns = lateral), B-scans along the volume's depth:

* vitreous (dark), then the inner retina between ILM and RPE as seven bands (NFL bright,
  GCL/IPL, INL dark, OPL bright, ONL dark, ELM/EZ bright, interdigitation), the RPE (brightest),
  the choroid (textured, fading with depth);
* per patient: retina position, bowl-shaped curvature (laterally and across B-scans), tilt,
  thickness, a foveal pit, brightness, choroid brightness, each drawn from
  ``ANATOMY_RANGES`` scaled by ``anatomy_variation``;
* per volume: a small shift (rows/columns, also scaled by ``anatomy_variation``), a gain,
  lesion positions, speckle;
* a slight blur (the device's point spread) and multiplicative gamma speckle with coefficient
  of variation ``noise`` plus a little additive noise; stored as uint8.

Classes (names sort into their index; ``0_normal`` is the majority class by default):

========== =================================================================================
0_normal   no lesion
1_drusen   4–6 domes lifting the RPE band, bright drusen material below it, Bruch's membrane
           kept at the old level
2_fluid    2–3 dark ovoid pockets in the inner retina (the main one full size, the others
           0.8 ×), the retina thickened above them
3_atrophy  1–2 patches where the RPE is thinned and dimmed, the outer retina thinned, and the
           choroid below is brighter and visible deeper (hypertransmission)
========== =================================================================================

``difficulty`` divides every lesion size (height, width, B-scans spanned); contrasts and
counts are fixed. At ``difficulty = 1`` and 16 × 64 × 64, drusen lift the RPE about 5 rows
(16 columns wide, over 6 B-scans), the main fluid pocket is about 12 × 28 pixels over 10
B-scans, atrophy patches are about 32 columns over 10 B-scans: the lesion sizes of DESIGN.md's
measured setting. ``difficulty = 2`` halves them. Sizes scale with the volume shape;
:class:`LesionParams` holds every size, count and contrast for tuning.

How learnable the classes are depends as much on the nuisance as on the lesions. A tiny
random-init V-JEPA 2 mean-pools 128 tokens, so a few px of retina shift between patients hides
a lesion that covers a few tokens. Measured here (2 CPU cores, the configs in ``configs/``):
with 240 volumes the validation split holds only ~4 volumes per minority class and the fixed
recipe's best balanced accuracy ranged 0.59–0.77 by data seed. With the default 720 volumes
(``n_volumes``), data seeds 0/1/2: the fixed recipe's best validation balanced accuracy within
10 epochs was 0.86 / 0.89 / 0.81, while the baseline put >= 97 % of validation predictions on
class 0 in every epoch (balanced accuracy 0.25–0.33). With ``anatomy_variation=1`` and
``noise=0.3`` (more realistic patient-to-patient spread, same lesion sizes) the fixed recipe
stayed at 0.3–0.4 on 240 volumes. Raise ``anatomy_variation`` or
``difficulty`` to make the task harder.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from octtrain.errors import DataError

CLASS_NAMES = ("0_normal", "1_drusen", "2_fluid", "3_atrophy")
CLASS_LESIONS = ("none", "drusen", "fluid", "atrophy")
FORMATS = ("npy", "npz", "nifti", "tiff", "dicom", "png-folder")
FORMAT_SUFFIX = {"npy": ".npy", "npz": ".npz", "nifti": ".nii.gz", "tiff": ".tif",
                 "dicom": ".dcm", "png-folder": ""}
REFERENCE_SHAPE = (16, 64, 64)  # (D, H, W) at which LesionParams sizes are given
MANIFEST_NAME = "manifest.csv"
CLASSES_NAME = "classes.json"
DEFAULT_NOISE = 0.2
# Patient-to-patient anatomy spread (see ANATOMY_RANGES). 0.2, not 1: see the module docstring.
DEFAULT_ANATOMY_VARIATION = 0.2
# Ophthalmic Tomography Image Storage: the SOP class of OCT volumes in DICOM.
OPT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"

# Inner retina (ILM → RPE) as (start, end, intensity) in fractions of its thickness.
_INNER_LAYERS = (
    (0.00, 0.12, 0.80),  # NFL
    (0.12, 0.34, 0.48),  # GCL + IPL
    (0.34, 0.47, 0.24),  # INL
    (0.47, 0.56, 0.55),  # OPL
    (0.56, 0.85, 0.14),  # ONL
    (0.85, 0.94, 0.62),  # ELM / ellipsoid zone
    (0.94, 1.00, 0.34),  # interdigitation zone
)
_EDGE = 0.02  # half-width of the linear blend between two bands (fraction of thickness)
_INNER_KNOTS = np.array([k for a, b, _ in _INNER_LAYERS for k in (a + _EDGE, b - _EDGE)],
                        dtype=np.float32)
_INNER_VALUES = np.array([v for *_, v in _INNER_LAYERS for _ in (0, 1)], dtype=np.float32)
_VITREOUS = 0.03
_RPE = 0.95
_BRUCH = 0.7
_FLUID = 0.03
_RPE_ROWS = 3.0  # RPE thickness at the reference height
_FLUID_CENTRE = 0.55  # the pocket's centre line, as a fraction of the inner retina (OPL/ONL)


@dataclass(frozen=True)
class LesionParams:
    """Lesion geometry at the reference shape 16 × 64 × 64 and difficulty 1 (pixels, B-scans).

    Sizes are full extents (diameters), scaled by ``shape / REFERENCE_SHAPE`` and divided by
    the difficulty; each lesion draws its own size within ±15 % (fluid ±10 %).
    """

    drusen_height: float = 5.0  # rows the RPE is lifted at a druse's top
    drusen_width: float = 16.0  # columns
    drusen_frames: float = 6.0  # B-scans
    drusen_count: tuple[int, int] = (4, 6)  # inclusive range per volume
    drusen_material: float = 0.8  # intensity of the druse between lifted RPE and Bruch's
    fluid_height: float = 12.0  # rows of the main pocket
    fluid_width: float = 28.0
    fluid_frames: float = 10.0
    fluid_count: tuple[int, int] = (2, 3)  # pockets per volume; extra ones are smaller
    fluid_extra_scale: float = 0.8  # size of the extra pockets relative to the main one
    fluid_thickening: float = 0.8  # the retina above thickens by this × the pocket height
    atrophy_width: float = 32.0
    atrophy_frames: float = 10.0
    atrophy_count: tuple[int, int] = (1, 2)
    atrophy_rpe_loss: float = 0.7  # fraction of RPE brightness lost in the patch
    atrophy_hypertransmission: float = 0.6  # added to the choroid's intensity below it

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                if len(value) != 2 or not 1 <= value[0] <= value[1]:
                    raise DataError(f"lesion parameter {f.name} must be (min, max) with "
                                    f"1 <= min <= max, got {value!r}")
            elif not value >= 0:
                raise DataError(f"lesion parameter {f.name} must be >= 0, got {value!r}")

    def scaled(self, shape: Sequence[int], difficulty: float) -> LesionParams:
        """Sizes for a volume of ``shape`` (D, H, W) at ``difficulty``; contrasts unchanged."""
        d, h, w = (s / r / difficulty for s, r in zip(shape, REFERENCE_SHAPE, strict=True))
        return dataclasses.replace(
            self,
            drusen_height=self.drusen_height * h, drusen_width=self.drusen_width * w,
            drusen_frames=self.drusen_frames * d, fluid_height=self.fluid_height * h,
            fluid_width=self.fluid_width * w, fluid_frames=self.fluid_frames * d,
            atrophy_width=self.atrophy_width * w, atrophy_frames=self.atrophy_frames * d,
        )


@dataclass(frozen=True)
class Anatomy:
    """One patient's retina; vertical sizes are fractions of the height, positions in [-1, 1]."""

    rpe_row: float  # RPE row at the centre
    curvature: float  # how much higher the RPE is at the lateral edges
    curvature_d: float  # ... and at the first/last B-scan
    tilt: float  # RPE rise from left to right edge (half of it each side)
    thickness: float  # ILM → RPE
    fovea_x: float
    fovea_d: float
    pit_depth: float  # fraction of the thickness missing at the foveal centre
    gain: float
    choroid: float  # choroid brightness just below the RPE


# Range of every Anatomy field at variation 1: (low, high).
ANATOMY_RANGES: dict[str, tuple[float, float]] = {
    "rpe_row": (0.62, 0.69), "curvature": (0.0, 0.10), "curvature_d": (0.0, 0.06),
    "tilt": (-0.05, 0.05), "thickness": (0.32, 0.40), "fovea_x": (-0.15, 0.15),
    "fovea_d": (-0.2, 0.2), "pit_depth": (0.25, 0.5), "gain": (0.8, 1.05),
    "choroid": (0.32, 0.45),
}


def draw_anatomy(
    rng: np.random.Generator, variation: float = DEFAULT_ANATOMY_VARIATION
) -> Anatomy:
    """A random plausible patient; ``variation`` scales every range about its middle
    (0: every patient is the average patient)."""
    values = {}
    for name, (lo, hi) in ANATOMY_RANGES.items():
        mid, half = (lo + hi) / 2, (hi - lo) / 2 * variation
        values[name] = float(rng.uniform(mid - half, mid + half))
    return Anatomy(**values)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _centre(rng: np.random.Generator, n: float, half: float) -> float:
    """A lesion centre in ``[half, n - half]`` so the lesion fits; the middle if it cannot."""
    lo, hi = half, n - half
    return float(rng.uniform(lo, hi)) if hi > lo else n / 2


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int]) -> np.ndarray:
    """Smooth unit-scale random texture (choroidal vessels), correlated over ~4 pixels."""
    d, h, w = shape
    low = rng.standard_normal((max(d // 2, 1) + 1, h // 4 + 2, w // 4 + 2)).astype(np.float32)
    up = F.interpolate(torch.from_numpy(low)[None, None], size=shape, mode="trilinear",
                       align_corners=True)
    return up[0, 0].numpy()


def render_volume(
    label: int,
    anatomy: Anatomy,
    shape: Sequence[int],
    rng: np.random.Generator,
    *,
    lesions: LesionParams,
    noise: float = DEFAULT_NOISE,
    variation: float = DEFAULT_ANATOMY_VARIATION,
) -> np.ndarray:
    """One phantom as float32 ``(D, H, W)`` in ``[0, 1]``; ``lesions`` already scaled.

    Random draws happen in a fixed order (volume jitter, texture, lesions, noise), so the same
    ``rng`` state renders the same anatomy for every label, and ``noise=0`` gives the clean
    image: tests compare classes pixel by pixel that way.
    """
    n_d, n_h, n_w = (int(s) for s in shape)
    s = n_h / REFERENCE_SHAPE[1]  # rows per reference row
    dd = np.arange(n_d, dtype=np.float32)[:, None, None] + 0.5  # (D, 1, 1) B-scan centres
    yy = np.arange(n_h, dtype=np.float32)[None, :, None] + 0.5  # (1, H, 1) row centres
    xx = np.arange(n_w, dtype=np.float32)[None, None, :] + 0.5  # (1, 1, W) column centres
    dn = dd / n_d * 2 - 1
    a = anatomy

    # Per-volume jitter: the patient's eye is never scanned at exactly the same place.
    shift_y = rng.uniform(-0.03, 0.03) * variation
    shift_x = rng.uniform(-0.06, 0.06) * variation
    gain = a.gain * (1 + rng.uniform(-0.07, 0.07) * variation)
    texture = np.clip(1 + 0.3 * _smooth_field(rng, (n_d, n_h, n_w)), 0.5, 1.5)
    xs = xx / n_w * 2 - 1 - shift_x

    y_rpe = n_h * (a.rpe_row + shift_y - a.curvature * xs**2 - a.curvature_d * dn**2
                   + a.tilt * xs / 2)  # (D, 1, W)
    pit = np.exp(-((xs - a.fovea_x) ** 2 + (dn - a.fovea_d) ** 2) / (2 * 0.2**2))
    thickness = n_h * a.thickness * (1 - a.pit_depth * pit)  # (D, 1, W)

    lift = np.zeros((n_d, 1, n_w), np.float32)  # drusen: rows the RPE is lifted
    bulge = np.zeros((n_d, 1, n_w), np.float32)  # fluid: extra inner-retina thickness
    atrophy = np.zeros((n_d, 1, n_w), np.float32)  # atrophy: 0..1 patch weight
    pockets: list[tuple[np.ndarray, float]] = []  # fluid: (lateral/B-scan radius², ry)
    lp = lesions
    if label == 1:
        for _ in range(int(rng.integers(lp.drusen_count[0], lp.drusen_count[1] + 1))):
            rx = lp.drusen_width / 2 * rng.uniform(0.85, 1.15)
            rd = max(lp.drusen_frames / 2, 0.5)
            xc, dc = _centre(rng, n_w, rx), _centre(rng, n_d, rd)
            height = lp.drusen_height * rng.uniform(0.85, 1.15)
            r2 = ((xx - xc) / rx) ** 2 + ((dd - dc) / rd) ** 2
            lift = np.maximum(lift, height * np.sqrt(np.clip(1 - r2, 0, None)))
    elif label == 2:
        n_pockets = int(rng.integers(lp.fluid_count[0], lp.fluid_count[1] + 1))
        for k in [1.0] + [lp.fluid_extra_scale] * (n_pockets - 1):
            ry = lp.fluid_height / 2 * k * rng.uniform(0.9, 1.1)
            rx = lp.fluid_width / 2 * k * rng.uniform(0.9, 1.1)
            rd = max(lp.fluid_frames / 2 * k, 0.5)
            xc, dc = _centre(rng, n_w, rx), _centre(rng, n_d, rd)
            r2 = ((xx - xc) / rx) ** 2 + ((dd - dc) / rd) ** 2  # (D, 1, W)
            # The retina above swells smoothly, over a wider area than the pocket itself.
            bulge = np.maximum(bulge, lp.fluid_thickening * 2 * ry
                               * np.clip(1 - r2 / 1.4**2, 0, None) ** 2)
            pockets.append((r2, ry))
    elif label == 3:
        for _ in range(int(rng.integers(lp.atrophy_count[0], lp.atrophy_count[1] + 1))):
            rx = lp.atrophy_width / 2 * rng.uniform(0.85, 1.15)
            rd = max(lp.atrophy_frames / 2, 0.5)
            xc, dc = _centre(rng, n_w, rx), _centre(rng, n_d, rd)
            r2 = ((xx - xc) / rx) ** 2 + ((dd - dc) / rd) ** 2
            # soft edge over the outer ~30 % of the radius
            atrophy = np.maximum(atrophy, np.clip((1 - r2) * 2, 0, 1))

    y_top_rpe = y_rpe - lift  # the (possibly lifted) RPE's upper edge
    inner_th = (thickness + bulge) * (1 - 0.15 * atrophy)  # outer retina thins over atrophy
    y_ilm = y_top_rpe - inner_th
    rpe_rows = _RPE_ROWS * s * (1 - 0.5 * atrophy)
    choroid_top = y_rpe + rpe_rows

    u = (yy - y_ilm) / inner_th  # 0 at the ILM, 1 at the RPE
    inner: np.ndarray = np.interp(u, _INNER_KNOTS, _INNER_VALUES).astype(np.float32)
    for r2, ry in pockets:
        centre_line = y_top_rpe - inner_th * (1 - _FLUID_CENTRE)
        p2 = r2 + ((yy - centre_line) / ry) ** 2
        weight = np.clip(0.5 + (1 - p2) * 3, 0, 1)  # soft rim, half dark on the nominal edge
        inner = inner * (1 - weight) + _FLUID * weight
    v = (yy - choroid_top) / s  # reference rows below the RPE
    choroid = (a.choroid * np.interp(v, [0, 8, 16], [1.0, 0.5, 0.12]) * texture
               + lp.atrophy_hypertransmission * atrophy * np.exp(-np.maximum(v, 0) / 14))
    rpe = _RPE * (1 - lp.atrophy_rpe_loss * atrophy)
    image = np.select(
        [yy < y_ilm, yy < y_top_rpe, yy < y_top_rpe + rpe_rows, yy < y_rpe, yy < choroid_top],
        [np.float32(_VITREOUS), inner, rpe, np.float32(lp.drusen_material),
         np.where(lift > 0, _BRUCH, rpe)],
        default=choroid,
    ).astype(np.float32)  # (D, H, W)

    # Signal rolls off towards the lateral edges and with depth, as in real scans.
    image *= gain * (1 - 0.2 * xs**2) * np.exp(-0.25 * yy / n_h)
    image = gaussian_filter(image, sigma=(0, 0.5 * s, 0.7 * n_w / REFERENCE_SHAPE[2]))
    if noise > 0:
        looks = 1.0 / noise**2  # gamma speckle with coefficient of variation `noise`
        image = image * rng.gamma(looks, 1.0 / looks, image.shape).astype(np.float32)
        image += rng.normal(0.0, 0.015, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Planning: how many volumes and patients per class
# ---------------------------------------------------------------------------------------------


def class_counts(n_volumes: int, shares: Sequence[float]) -> list[int]:
    """Volumes per class: ``n * share`` rounded by largest remainder, so the sum is exactly n.

    Ties in the remainder go to the lower class index.
    """
    exact = [n_volumes * s for s in shares]
    counts = [math.floor(e) for e in exact]
    order = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n_volumes - sum(counts)]:
        counts[i] += 1
    return counts


def validate_request(
    n_volumes: int, shape: Sequence[int], class_shares: Sequence[float],
    volumes_per_patient: int, difficulty: float, noise: float, fmt: str,
    anatomy_variation: float = DEFAULT_ANATOMY_VARIATION,
) -> list[int]:
    """Check a generation request; the volumes per class, or a DataError quoting the value."""
    shares = tuple(float(s) for s in class_shares)
    if len(shares) != len(CLASS_NAMES):
        raise DataError(f"class_shares needs {len(CLASS_NAMES)} values (one per class "
                        f"{', '.join(CLASS_NAMES)}), got {shares}")
    if any(not s > 0 for s in shares) or abs(sum(shares) - 1) > 1e-6:
        raise DataError(f"class_shares must be > 0 each and sum to 1, got {shares} "
                        f"(sum {sum(shares):g})")
    frames, height, width = shape
    if frames < 2 or height < 16 or width < 16:
        raise DataError(f"volume shape must be at least 2 frames × 16 × 16, got "
                        f"frames={frames}, height={height}, width={width}")
    if volumes_per_patient < 1:
        raise DataError(f"volumes_per_patient must be >= 1, got {volumes_per_patient!r}")
    if not difficulty > 0:
        raise DataError(f"difficulty must be > 0, got {difficulty!r}")
    if not noise >= 0:
        raise DataError(f"noise must be >= 0, got {noise!r}")
    if not anatomy_variation >= 0:
        raise DataError(f"anatomy_variation must be >= 0, got {anatomy_variation!r}")
    if fmt not in FORMATS:
        raise DataError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    counts = class_counts(n_volumes, shares) if n_volumes >= 0 else [0]
    if min(counts) < 1:
        raise DataError(f"n_volumes={n_volumes} is too small to give every class a patient "
                        f"with class_shares={shares} (volumes per class: {counts})")
    return counts


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _write_dicom(path: Path, volume: np.ndarray, patient_id: str, seed: int) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    # Deterministic UIDs, so the same seed writes the same bytes.
    uid = generate_uid(entropy_srcs=["octtrain.synthetic", str(seed), path.name])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(OPT_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = UID(OPT_SOP_CLASS)
    ds.SOPInstanceUID = uid
    ds.Modality = "OPT"
    ds.PatientID = patient_id
    ds.NumberOfFrames = volume.shape[0]
    ds.Rows, ds.Columns = volume.shape[1], volume.shape[2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(volume).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_volume(
    base: Path, volume: np.ndarray, fmt: str, *, patient_id: str = "", seed: int = 0
) -> Path:
    """Write a uint8 ``(D, H, W)`` volume as ``base`` + the format's suffix; the path written.

    ``png-folder`` writes a directory ``base`` of ``bscan_<i>.png`` files without zero padding
    (``bscan_10`` after ``bscan_9`` only under natural sorting, as some exporters do).
    """
    path = base.with_name(base.name + FORMAT_SUFFIX[fmt])
    if fmt == "npy":
        np.save(path, volume)
    elif fmt == "npz":
        np.savez_compressed(path, volume=volume)
    elif fmt == "nifti":
        import nibabel as nib

        # NIfTI convention of octtrain.readers: (x, y, z) = (lateral, axial, B-scan).
        nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), np.eye(4)),
                 path)
    elif fmt == "tiff":
        import tifffile

        tifffile.imwrite(path, volume, photometric="minisblack")
    elif fmt == "dicom":
        _write_dicom(path, volume, patient_id, seed)
    elif fmt == "png-folder":
        from PIL import Image

        path.mkdir(parents=True, exist_ok=True)
        for i, bscan in enumerate(volume):
            Image.fromarray(bscan).save(path / f"bscan_{i}.png")
    else:
        raise DataError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return path


def _prepare_out_dir(out: Path) -> None:
    """Make ``out`` ready: new, empty, or an earlier synthetic set (whose files are removed).

    A non-empty folder that is not a synthetic set is refused: the generator never deletes
    files it did not write.
    """
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not out.is_dir():
        raise DataError(f"{out}: output path exists and is not a directory")
    if not any(out.iterdir()):
        return
    try:
        previous = json.loads((out / CLASSES_NAME).read_text()).get("generator")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous != __name__:
        raise DataError(f"{out}: output directory is not empty and holds no earlier synthetic "
                        "data set; choose a new or empty directory")
    for name in CLASS_NAMES:
        shutil.rmtree(out / name, ignore_errors=True)
    for name in (MANIFEST_NAME, CLASSES_NAME):
        (out / name).unlink(missing_ok=True)


def make_synthetic(
    out_dir: str | os.PathLike[str],
    *,
    n_volumes: int = 720,
    frames: int = 16,
    height: int = 64,
    width: int = 64,
    class_shares: Sequence[float] = (0.7, 0.1, 0.1, 0.1),
    volumes_per_patient: int = 2,
    difficulty: float = 1.0,
    noise: float = DEFAULT_NOISE,
    fmt: str = "npy",
    seed: int = 0,
    lesions: LesionParams | None = None,
    anatomy_variation: float = DEFAULT_ANATOMY_VARIATION,
) -> Path:
    """Write a phantom data set and return the path of its ``manifest.csv``.

    Layout: ``out_dir/<class name>/p<patient>_v<k><suffix>`` (so ``out_dir`` also works as a
    folder-per-class ``data.root``), ``manifest.csv`` (``path,label,patient_id``, paths relative
    to it, labels as class names) and ``classes.json`` (classes, counts and every generation
    parameter). Each patient has ``volumes_per_patient`` volumes (the last patient of a class
    may have fewer), all of one class. Output is a function of the arguments and ``seed``:
    patient ``p`` and volume ``v`` draw from independent streams seeded by ``(seed, p)`` and
    ``(seed, v)``.
    """
    shape = (int(frames), int(height), int(width))
    counts = validate_request(n_volumes, shape, class_shares, volumes_per_patient, difficulty,
                              noise, fmt, anatomy_variation)
    scaled = (lesions or LesionParams()).scaled(shape, difficulty)
    out = Path(out_dir)
    _prepare_out_dir(out)
    # classes.json first: it marks the folder as ours, so a run interrupted half-way can be
    # re-run into the same folder (see _prepare_out_dir).
    meta = {
        "generator": __name__,
        "classes": [
            {"name": name, "index": label, "lesion": CLASS_LESIONS[label], "volumes": count,
             "patients": math.ceil(count / volumes_per_patient)}
            for label, (name, count) in enumerate(zip(CLASS_NAMES, counts, strict=True))
        ],
        "params": {
            "n_volumes": n_volumes, "frames": frames, "height": height, "width": width,
            "class_shares": list(class_shares), "volumes_per_patient": volumes_per_patient,
            "difficulty": difficulty, "noise": noise, "anatomy_variation": anatomy_variation,
            "format": fmt, "seed": seed,
            "lesions_reference": dataclasses.asdict(lesions or LesionParams()),
            "lesions_scaled": dataclasses.asdict(scaled),
        },
    }
    (out / CLASSES_NAME).write_text(json.dumps(meta, indent=2) + "\n")

    rows: list[tuple[str, str, str]] = []
    patient = volume_index = 0
    for label, (name, count) in enumerate(zip(CLASS_NAMES, counts, strict=True)):
        (out / name).mkdir()
        remaining = count
        while remaining > 0:  # patients of this class; the last one may have fewer volumes
            patient_id = f"p{patient:04d}"
            anatomy = draw_anatomy(np.random.default_rng([seed, 0, patient]),
                                   anatomy_variation)
            n_here = min(volumes_per_patient, remaining)
            remaining -= n_here
            for visit in range(n_here):
                rng = np.random.default_rng([seed, 1, volume_index])
                clean = render_volume(label, anatomy, shape, rng, lesions=scaled, noise=noise,
                                      variation=anatomy_variation)
                volume = np.round(clean * 255).astype(np.uint8)
                path = write_volume(out / name / f"{patient_id}_v{visit}", volume, fmt,
                                    patient_id=patient_id, seed=seed)
                rows.append((path.relative_to(out).as_posix(), name, patient_id))
                volume_index += 1
            patient += 1

    with (out / MANIFEST_NAME).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label", "patient_id"))
        writer.writerows(rows)
    return out / MANIFEST_NAME


# ---------------------------------------------------------------------------------------------
# CLI hooks (wired by octtrain.cli as `octtrain make-synthetic`)
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``make-synthetic`` options to ``parser``."""
    parser.add_argument("--out", required=True, help="output directory (new, empty, or an "
                        "earlier synthetic set, which is replaced)")
    parser.add_argument("--n-volumes", type=int, default=720)
    parser.add_argument("--frames", type=int, default=16, help="B-scans per volume")
    parser.add_argument("--height", type=int, default=64, help="rows per B-scan")
    parser.add_argument("--width", type=int, default=64, help="columns per B-scan")
    parser.add_argument("--class-shares", default="0.7,0.1,0.1,0.1",
                        help=f"comma-separated shares of {', '.join(CLASS_NAMES)}")
    parser.add_argument("--volumes-per-patient", type=int, default=2)
    parser.add_argument("--difficulty", type=float, default=1.0,
                        help="lesion sizes are divided by this (1: DESIGN.md's setting)")
    parser.add_argument("--noise", type=float, default=DEFAULT_NOISE,
                        help="speckle coefficient of variation")
    parser.add_argument("--anatomy-variation", type=float, default=DEFAULT_ANATOMY_VARIATION,
                        help="scale of the patient-to-patient anatomy ranges (0: all alike)")
    parser.add_argument("--format", default="npy", choices=FORMATS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lesion", action="append", default=[], metavar="NAME=VALUE",
                        help="override a LesionParams field, e.g. drusen_height=4 (repeatable)")


def parse_shares(text: str) -> tuple[float, ...]:
    """``"0.7,0.1,0.1,0.1"`` → floats; a DataError quoting the text when it does not parse."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise DataError(f"--class-shares must be comma-separated numbers, got {text!r}") from None


def parse_lesions(items: Sequence[str]) -> LesionParams:
    """``["drusen_height=4", "drusen_count=1,2"]`` → LesionParams with those fields replaced."""
    fields = {f.name: f for f in dataclasses.fields(LesionParams)}
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise DataError(f"--lesion must be NAME=VALUE with NAME one of "
                            f"{', '.join(fields)}, got {item!r}")
        try:
            if key.endswith("_count"):
                lo, hi = (int(p) for p in text.split(","))
                changes[key] = (lo, hi)
            else:
                changes[key] = float(text)
        except ValueError:
            raise DataError(f"--lesion {key}: bad value {text!r}") from None
    return LesionParams(**changes)


def run_from_args(args: argparse.Namespace) -> Path:
    """Generate from parsed ``make-synthetic`` arguments; the manifest path."""
    return make_synthetic(
        args.out, n_volumes=args.n_volumes, frames=args.frames, height=args.height,
        width=args.width, class_shares=parse_shares(args.class_shares),
        volumes_per_patient=args.volumes_per_patient, difficulty=args.difficulty,
        noise=args.noise, fmt=args.format, seed=args.seed,
        lesions=parse_lesions(getattr(args, "lesion", [])),
        anatomy_variation=args.anatomy_variation,
    )
