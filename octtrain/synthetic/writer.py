"""A phantom data set on disk: volumes of :mod:`octtrain.synthetic.phantom` written in the formats real
OCT exports come in, with a manifest, so that tests and the demo read them like real data.

``make_synthetic(out_dir, ...)`` plans how many volumes and patients each class gets
(70/10/10/10 by default, several volumes per patient), renders each from its own random
stream, and writes ``out_dir/<class name>/p<patient>_v<k><suffix>``, ``manifest.csv`` and
``classes.json`` (every generation parameter). ``octtrain make-synthetic`` is its command line.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from octtrain.errors import DataError
from octtrain.synthetic.heyex_vol import write_heyex_vol
from octtrain.synthetic.phantom import (
    CLASS_LESIONS,
    CLASS_NAMES,
    DEFAULT_ANATOMY_VARIATION,
    DEFAULT_NOISE,
    LesionParams,
    draw_anatomy,
    render_volume,
)

FORMATS = ("npy", "npz", "nifti", "tiff", "dicom", "png-folder", "vol")
FORMAT_SUFFIX = {"npy": ".npy", "npz": ".npz", "nifti": ".nii.gz", "tiff": ".tif",
                 "dicom": ".dcm", "png-folder": "", "vol": ".vol"}
MANIFEST_NAME = "manifest.csv"
CLASSES_NAME = "classes.json"
# Ophthalmic Tomography Image Storage: the SOP class of OCT volumes in DICOM.
OPT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.5.4"


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
    uid = generate_uid(entropy_srcs=["octtrain.synthetic.writer", str(seed), path.name])
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
    (``bscan_10`` after ``bscan_9`` only under natural sorting, as some exporters do); ``vol`` a
    HEYEX .vol with the patient id in its header (:mod:`octtrain.synthetic.heyex_vol`).
    """
    path = base.with_name(base.name + FORMAT_SUFFIX[fmt])
    if fmt == "npy":
        np.save(path, volume)
    elif fmt == "npz":
        np.savez_compressed(path, volume=volume)
    elif fmt == "nifti":
        import nibabel as nib

        # NIfTI convention of octtrain.data.readers: (x, y, z) = (lateral, axial, B-scan).
        nib.save(nib.Nifti1Image(np.ascontiguousarray(volume.transpose(2, 1, 0)), np.eye(4)),
                 path)
    elif fmt == "tiff":
        import tifffile

        tifffile.imwrite(path, volume, photometric="minisblack")
    elif fmt == "dicom":
        _write_dicom(path, volume, patient_id, seed)
    elif fmt == "vol":
        write_heyex_vol(path, volume, patient_id=patient_id)
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
    reference = lesions or LesionParams()
    scaled = reference.scaled(shape, difficulty)
    out = Path(out_dir)
    _prepare_out_dir(out)
    # classes.json first: it marks the folder as ours, so a run interrupted half-way can be
    # re-run into the same folder (see _prepare_out_dir).
    params = {
        "n_volumes": n_volumes, "frames": frames, "height": height, "width": width,
        "class_shares": list(class_shares), "volumes_per_patient": volumes_per_patient,
        "difficulty": difficulty, "noise": noise, "anatomy_variation": anatomy_variation,
        "format": fmt, "seed": seed,
        "lesions_reference": dataclasses.asdict(reference),
        "lesions_scaled": dataclasses.asdict(scaled),
    }
    (out / CLASSES_NAME).write_text(json.dumps(_classes_json(counts, volumes_per_patient, params),
                                               indent=2) + "\n")
    rows = _write_volumes(out, counts, shape, scaled, volumes_per_patient=volumes_per_patient,
                          seed=seed, noise=noise, fmt=fmt, anatomy_variation=anatomy_variation)
    with (out / MANIFEST_NAME).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "label", "patient_id"))
        writer.writerows(rows)
    return out / MANIFEST_NAME


def _classes_json(counts: Sequence[int], volumes_per_patient: int,
                  params: dict[str, Any]) -> dict[str, Any]:
    return {
        "generator": __name__,
        "classes": [
            {"name": name, "index": label, "lesion": CLASS_LESIONS[label], "volumes": count,
             "patients": math.ceil(count / volumes_per_patient)}
            for label, (name, count) in enumerate(zip(CLASS_NAMES, counts, strict=True))
        ],
        "params": params,
    }


def _write_volumes(
    out: Path, counts: Sequence[int], shape: tuple[int, int, int], lesions: LesionParams, *,
    volumes_per_patient: int, seed: int, noise: float, fmt: str, anatomy_variation: float,
) -> list[tuple[str, str, str]]:
    """Render and write every volume, class by class; the manifest rows
    ``(path relative to out, class name, patient id)``."""
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
                clean = render_volume(label, anatomy, shape, rng, lesions=lesions, noise=noise,
                                      variation=anatomy_variation)
                volume = np.round(clean * 255).astype(np.uint8)
                path = write_volume(out / name / f"{patient_id}_v{visit}", volume, fmt,
                                    patient_id=patient_id, seed=seed)
                rows.append((path.relative_to(out).as_posix(), name, patient_id))
                volume_index += 1
            patient += 1
    return rows
