"""octtrain.data.preprocess: intensity scaling, resampling and the on-disk cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from octtrain.data.preprocess import clip_and_scale, default_cache_dir, preprocess, replace_nonfinite, resample

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "values,clip,expected",
    [
        ([0, 1, 2, 3, 4], (0, 100), [0, 0.25, 0.5, 0.75, 1]),
        # percentiles of 0..100 (linear interpolation): 10 → 10, 90 → 90
        (list(range(101)), (10, 90), [min(max((v - 10) / 80, 0), 1) for v in range(101)]),
        ([5, 5, 5, 5], (1, 99), [0, 0, 0, 0]),  # constant: zeros, not NaN
        ([NAN, 0, 1, 2], (0, 100), [0, 0, 0.5, 1]),  # NaN → the low end
        ([-INF, 0, 2, INF], (0, 100), [0, 0, 1, 1]),  # percentiles over finite values only
        ([NAN, NAN], (0, 100), [0, 0]),
        ([-3, -1], (0, 100), [0, 1]),
    ],
)
def test_clip_and_scale(values: list[float], clip: tuple[float, float],
                        expected: list[float]) -> None:
    got = clip_and_scale(np.array(values, np.float32), clip)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_resample_same_shape_is_unchanged() -> None:
    vol = np.random.default_rng(0).random((3, 5, 7)).astype(np.float32)
    np.testing.assert_array_equal(resample(vol, (3, 5, 7)), vol)


def test_resample_halving_is_block_average() -> None:
    vol = np.random.default_rng(1).random((4, 6, 8)).astype(np.float32)
    expected = vol.reshape(2, 2, 3, 2, 4, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(resample(vol, (2, 3, 4)), expected, rtol=1e-6)


def test_resample_upsampling_is_linear_between_centres() -> None:
    vol = np.array([0.0, 1.0], np.float32).reshape(1, 2, 1)  # one column, two rows
    got = resample(vol, (1, 4, 1))[0, :, 0]
    # align_corners=False: output row centres at 0.25, 0.75, 1.25, 1.75 input rows → 0, .25, .75, 1
    np.testing.assert_allclose(got, [0.0, 0.25, 0.75, 1.0], atol=1e-6)


def test_resample_single_bscan_repeats() -> None:
    bscan = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    got = resample(bscan, (5, 3, 4))
    for frame in got:
        np.testing.assert_allclose(frame, bscan[0], rtol=1e-6)


def test_resample_mixed_shrink_and_grow() -> None:
    vol = np.ones((10, 2, 30), np.float32)
    got = resample(vol, (4, 8, 16))
    assert got.shape == (4, 8, 16)
    np.testing.assert_allclose(got, 1.0, rtol=1e-6)


def test_preprocess_shape_range_dtype() -> None:
    raw = np.random.default_rng(2).gamma(2.0, 50.0, (7, 40, 30)).astype(np.float32)
    out = preprocess(raw, (4, 16, 16), (1.0, 99.0))
    assert out.shape == (4, 16, 16) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.isfinite(out).all()


def test_default_cache_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "octtrain"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "octtrain"


def test_replace_nonfinite_counts_what_it_zeroes() -> None:
    volume = np.array([1.0, np.nan, -np.inf, np.inf], dtype=np.float32)
    assert replace_nonfinite(volume) == 3
    np.testing.assert_array_equal(volume, [1.0, 0.0, 0.0, 0.0])
