"""OCT-like phantom volumes with four classes, rendered one at a time (the data of every test
and of the demo; :mod:`octtrain.synthetic.writer` writes them as a data set).

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

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from octtrain.errors import DataError

CLASS_NAMES = ("0_normal", "1_drusen", "2_fluid", "3_atrophy")  # label i renders CLASS_LESIONS[i]
CLASS_LESIONS = ("none", "drusen", "fluid", "atrophy")
REFERENCE_SHAPE = (16, 64, 64)  # (D, H, W) at which LesionParams sizes are given
DEFAULT_NOISE = 0.2
# Patient-to-patient anatomy spread (see ANATOMY_RANGES). 0.2, not 1: see the module docstring.
DEFAULT_ANATOMY_VARIATION = 0.2

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


class _LesionFields(NamedTuple):
    """The lesions of one volume over the (D, 1, W) plane of B-scans × columns."""

    lift: np.ndarray  # drusen: rows the RPE is lifted
    bulge: np.ndarray  # fluid: extra inner-retina thickness
    atrophy: np.ndarray  # atrophy: 0..1 patch weight
    pockets: list[tuple[np.ndarray, float]]  # fluid: (lateral/B-scan radius², ry)


def _lesions(
    label: int, lp: LesionParams, rng: np.random.Generator, dd: np.ndarray, xx: np.ndarray,
    n_d: int, n_w: int,
) -> _LesionFields:
    """The lesions of class ``label`` as fields over the (D, 1, W) plane of B-scans × columns,
    each empty for the other classes."""
    lift = np.zeros((n_d, 1, n_w), np.float32)
    bulge = np.zeros((n_d, 1, n_w), np.float32)
    atrophy = np.zeros((n_d, 1, n_w), np.float32)
    pockets: list[tuple[np.ndarray, float]] = []
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
    return _LesionFields(lift, bulge, atrophy, pockets)


def _retina_surface(
    a: Anatomy, xs: np.ndarray, dn: np.ndarray, n_h: int, shift_y: float
) -> tuple[np.ndarray, np.ndarray]:
    """``(y_rpe, thickness)``, each (D, 1, W) in rows: the healthy RPE's upper edge (bowl,
    tilt, shift) and the ILM → RPE thickness with the foveal pit."""
    y_rpe = n_h * (a.rpe_row + shift_y - a.curvature * xs**2 - a.curvature_d * dn**2
                   + a.tilt * xs / 2)  # (D, 1, W)
    pit = np.exp(-((xs - a.fovea_x) ** 2 + (dn - a.fovea_d) ** 2) / (2 * 0.2**2))
    thickness = n_h * a.thickness * (1 - a.pit_depth * pit)  # (D, 1, W)
    return y_rpe, thickness


def _inner_retina(
    yy: np.ndarray, y_ilm: np.ndarray, y_top_rpe: np.ndarray, inner_th: np.ndarray,
    pockets: list[tuple[np.ndarray, float]],
) -> np.ndarray:
    """The seven bands between ILM and RPE, (D, H, W), with the fluid pockets dark."""
    u = (yy - y_ilm) / inner_th  # 0 at the ILM, 1 at the RPE
    inner: np.ndarray = np.interp(u, _INNER_KNOTS, _INNER_VALUES).astype(np.float32)
    for r2, ry in pockets:
        centre_line = y_top_rpe - inner_th * (1 - _FLUID_CENTRE)
        p2 = r2 + ((yy - centre_line) / ry) ** 2
        weight = np.clip(0.5 + (1 - p2) * 3, 0, 1)  # soft rim, half dark on the nominal edge
        inner = inner * (1 - weight) + _FLUID * weight
    return inner


def _tissue(
    a: Anatomy, lp: LesionParams, fields: _LesionFields, yy: np.ndarray, y_rpe: np.ndarray,
    thickness: np.ndarray, texture: np.ndarray, s: float,
) -> np.ndarray:
    """The clean reflectivity, float32 (D, H, W): vitreous, inner retina, RPE, drusen material,
    Bruch's membrane, choroid, top to bottom, with the lesions in place."""
    lift, bulge, atrophy, pockets = fields
    y_top_rpe = y_rpe - lift  # the (possibly lifted) RPE's upper edge
    inner_th = (thickness + bulge) * (1 - 0.15 * atrophy)  # outer retina thins over atrophy
    y_ilm = y_top_rpe - inner_th
    rpe_rows = _RPE_ROWS * s * (1 - 0.5 * atrophy)
    choroid_top = y_rpe + rpe_rows

    inner = _inner_retina(yy, y_ilm, y_top_rpe, inner_th, pockets)
    v = (yy - choroid_top) / s  # reference rows below the RPE
    choroid = (a.choroid * np.interp(v, [0, 8, 16], [1.0, 0.5, 0.12]) * texture
               + lp.atrophy_hypertransmission * atrophy * np.exp(-np.maximum(v, 0) / 14))
    rpe = _RPE * (1 - lp.atrophy_rpe_loss * atrophy)
    image: np.ndarray = np.select(
        [yy < y_ilm, yy < y_top_rpe, yy < y_top_rpe + rpe_rows, yy < y_rpe, yy < choroid_top],
        [np.float32(_VITREOUS), inner, rpe, np.float32(lp.drusen_material),
         np.where(lift > 0, _BRUCH, rpe)],
        default=choroid,
    ).astype(np.float32)  # (D, H, W)
    return image


def _acquire(
    image: np.ndarray, rng: np.random.Generator, *, gain: float, xs: np.ndarray,
    yy: np.ndarray, s: float, noise: float,
) -> np.ndarray:
    """What the device does to the clean ``image`` (changed in place): roll-off, blur, speckle
    and additive noise (none if ``noise`` is 0), clipped to ``[0, 1]``."""
    n_h, n_w = image.shape[1:]
    # Signal rolls off towards the lateral edges and with depth, as in real scans.
    image *= gain * (1 - 0.2 * xs**2) * np.exp(-0.25 * yy / n_h)
    image = gaussian_filter(image, sigma=(0, 0.5 * s, 0.7 * n_w / REFERENCE_SHAPE[2]))
    if noise > 0:
        looks = 1.0 / noise**2  # gamma speckle with coefficient of variation `noise`
        image = image * rng.gamma(looks, 1.0 / looks, image.shape).astype(np.float32)
        image += rng.normal(0.0, 0.015, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


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

    # Per-volume jitter: the patient's eye is never scanned at exactly the same place.
    shift_y = rng.uniform(-0.03, 0.03) * variation
    shift_x = rng.uniform(-0.06, 0.06) * variation
    gain = anatomy.gain * (1 + rng.uniform(-0.07, 0.07) * variation)
    texture = np.clip(1 + 0.3 * _smooth_field(rng, (n_d, n_h, n_w)), 0.5, 1.5)
    xs = xx / n_w * 2 - 1 - shift_x

    y_rpe, thickness = _retina_surface(anatomy, xs, dn, n_h, shift_y)
    fields = _lesions(label, lesions, rng, dd, xx, n_d, n_w)
    image = _tissue(anatomy, lesions, fields, yy, y_rpe, thickness, texture, s)
    return _acquire(image, rng, gain=gain, xs=xs, yy=yy, s=s, noise=noise)
