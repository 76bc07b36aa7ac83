"""octtrain.synthetic.phantom: lesion geometry and noise, measured in renders (same anatomy and random
stream for every class, so classes compare pixel by pixel)."""

from __future__ import annotations

import numpy as np
import pytest

from octtrain.errors import DataError
from octtrain.synthetic.phantom import LesionParams, draw_anatomy, render_volume


def _clean(label: int, seed: int, difficulty: float = 1.0) -> np.ndarray:
    shape = (16, 64, 64)
    lesions = LesionParams(fluid_count=(1, 1)).scaled(shape, difficulty)
    anatomy = draw_anatomy(np.random.default_rng(100 + seed), variation=1.0)  # widest spread
    return render_volume(label, anatomy, shape, np.random.default_rng(seed), lesions=lesions,
                         noise=0.0, variation=1.0)


def _rpe_rows(v: np.ndarray) -> np.ndarray:
    """(D, W) row of the RPE: the brightest row in the lower part of each A-scan."""
    lo = int(0.45 * v.shape[1])
    return v[:, lo:, :].argmax(axis=1) + lo


def _fluid_mask(v: np.ndarray) -> np.ndarray:
    """Dark pixels between the first bright row (NFL) and the RPE."""
    first_bright = (v > 0.2).argmax(axis=1)[:, None, :]
    rows = np.arange(v.shape[1])[None, :, None]
    return (v < 0.06) & (rows > first_bright) & (rows < _rpe_rows(v)[:, None, :])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_difficulty_one_lesion_sizes(seed: int) -> None:
    normal, drusen, fluid, atrophy = (_clean(label, seed) for label in range(4))
    # drusen lift the RPE by ~5 rows (±15 %)
    assert 4 <= (_rpe_rows(normal) - _rpe_rows(drusen)).max() <= 6
    # fluid: a dark pocket ~12 rows × 28 columns over ~10 B-scans; none in a normal retina
    assert not _fluid_mask(normal).any()
    pocket = _fluid_mask(fluid)
    assert 10 <= pocket.sum(axis=1).max() <= 14
    assert 23 <= pocket.any(axis=1).sum(axis=1).max() <= 32
    assert 8 <= pocket.any(axis=(1, 2)).sum() <= 11
    # atrophy: RPE dimmer, choroid below much brighter (hypertransmission)
    assert (normal.max(axis=1) - atrophy.max(axis=1)).max() > 0.1
    assert (atrophy - normal).max() > 0.2
    for lesion in (drusen, fluid, atrophy):
        assert lesion.min() >= 0 and lesion.max() <= 1


def test_difficulty_two_halves_the_lesions() -> None:
    normal, drusen, fluid = (_clean(label, 0, difficulty=2.0) for label in range(3))
    assert 2 <= (_rpe_rows(normal) - _rpe_rows(drusen)).max() <= 3
    pocket = _fluid_mask(fluid)
    assert 4 <= pocket.sum(axis=1).max() <= 8
    assert 10 <= pocket.any(axis=1).sum(axis=1).max() <= 16
    assert 4 <= pocket.any(axis=(1, 2)).sum() <= 6


def test_lesion_params_scale_with_shape_and_difficulty() -> None:
    p = LesionParams().scaled((32, 128, 32), 2.0)
    assert p.drusen_height == 5.0  # 5 * 128/64 / 2
    assert p.fluid_width == 7.0  # 28 * 32/64 / 2
    assert p.fluid_frames == 10.0  # 10 * 32/16 / 2
    assert p.atrophy_hypertransmission == LesionParams().atrophy_hypertransmission


def test_lesion_positions_vary_per_volume() -> None:
    anatomy = draw_anatomy(np.random.default_rng(0))
    lesions = LesionParams(fluid_count=(1, 1)).scaled((16, 64, 64), 1.0)
    centres = set()
    for seed in range(4):
        v = render_volume(2, anatomy, (16, 64, 64), np.random.default_rng(seed),
                          lesions=lesions, noise=0.0)
        d, _, w = np.nonzero(_fluid_mask(v))
        centres.add((round(d.mean()), round(w.mean())))
    assert len(centres) == 4


def test_anatomy_variation_scales_patient_spread() -> None:
    def spread(variation: float) -> float:
        rows = [draw_anatomy(np.random.default_rng(i), variation).rpe_row for i in range(50)]
        return float(np.ptp(rows))

    assert spread(0.0) == 0.0
    assert 0.3 * spread(1.0) < spread(0.5) < 0.7 * spread(1.0)
    assert spread(1.0) <= 0.69 - 0.62


def test_speckle_noise() -> None:
    anatomy = draw_anatomy(np.random.default_rng(0))
    lesions = LesionParams().scaled((4, 64, 64), 1.0)
    clean = render_volume(0, anatomy, (4, 64, 64), np.random.default_rng(1), lesions=lesions,
                          noise=0.0)
    noisy = render_volume(0, anatomy, (4, 64, 64), np.random.default_rng(1), lesions=lesions,
                          noise=0.3)
    bright = clean > 0.3
    # multiplicative speckle: relative deviation ~ the coefficient of variation 0.3
    rel = (noisy[bright] - clean[bright]) / clean[bright]
    assert 0.2 < rel.std() < 0.4
    assert noisy.min() >= 0 and noisy.max() <= 1


def test_bad_lesion_params() -> None:
    with pytest.raises(DataError, match="drusen_height must be >= 0, got -1"):
        LesionParams(drusen_height=-1)
    with pytest.raises(DataError, match=r"drusen_count.*\(3, 2\)"):
        LesionParams(drusen_count=(3, 2))
