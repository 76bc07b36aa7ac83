"""octtrain.preprocess: intensity scaling, resampling and the on-disk cache."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from octtrain import preprocess as pp
from octtrain.errors import DataError
from octtrain.preprocess import (
    VolumeCache,
    cache_key,
    clip_and_scale,
    default_cache_dir,
    preprocess,
    replace_nonfinite,
    resample,
)

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


def test_cache_none_uses_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert VolumeCache(None, (2, 4, 4), (1, 99)).cache_dir == tmp_path / "xdg" / "octtrain"
    assert (tmp_path / "xdg" / "octtrain").is_dir()


def _volume(path: Path, seed: int = 0) -> Path:
    np.save(path, np.random.default_rng(seed).random((6, 20, 24)).astype(np.float32))
    return path


def test_cache_key_changes_with_every_input(tmp_path: Path) -> None:
    src = _volume(tmp_path / "a.npy")
    base = cache_key(src, (4, 16, 16), (1, 99))
    assert cache_key(src, (4, 16, 16), (1, 99)) == base  # stable
    assert cache_key(src, (4, 16, 8), (1, 99)) != base  # shape
    assert cache_key(src, (4, 16, 16), (0.5, 99)) != base  # clip
    other = _volume(tmp_path / "b.npy")  # same content, other path
    assert cache_key(other, (4, 16, 16), (1, 99)) != base
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # mtime
    touched = cache_key(src, (4, 16, 16), (1, 99))
    assert touched != base
    with src.open("ab") as f:  # size
        f.write(b"\0")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache_key(src, (4, 16, 16), (1, 99)) not in (base, touched)


def test_cache_key_follows_format_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _volume(tmp_path / "a.npy")
    before = cache_key(src, (4, 16, 16), (1, 99))
    monkeypatch.setattr(pp, "FORMAT_VERSION", pp.FORMAT_VERSION + 1)
    assert cache_key(src, (4, 16, 16), (1, 99)) != before


def test_cache_key_of_bscan_folder_sees_an_edited_bscan(tmp_path: Path) -> None:
    d = tmp_path / "scans"
    d.mkdir()
    for i in range(3):
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(d / f"{i}.png")
    before = cache_key(d, (2, 4, 4), (1, 99))
    Image.fromarray(np.full((5, 5), 9, np.uint8)).save(d / "1.png")  # size changes
    assert cache_key(d, (2, 4, 4), (1, 99)) != before


def test_cache_key_of_missing_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="gone.npy"):
        cache_key(tmp_path / "gone.npy", (2, 4, 4), (1, 99))


def test_cache_reads_each_source_once(tmp_path: Path, count_reads: Any) -> None:
    sources = [_volume(tmp_path / f"v{i}.npy", seed=i) for i in range(3)]
    cache = VolumeCache(tmp_path / "cache", (4, 16, 16), (1, 99))
    first = [cache.load(s) for s in sources]
    assert count_reads.calls == 3
    second = [cache.load(s) for s in sources]  # "epoch 2"
    again = VolumeCache(tmp_path / "cache", (4, 16, 16), (1, 99))  # another process
    third = [again.load(s) for s in sources]
    assert count_reads.calls == 3
    for a, b, c, src in zip(first, second, third, sources, strict=True):
        expected = preprocess(np.load(src), (4, 16, 16), (1, 99))
        np.testing.assert_array_equal(a, expected)
        np.testing.assert_array_equal(b, expected)
        np.testing.assert_array_equal(c, expected)
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    assert not list((tmp_path / "cache").glob("*.tmp"))  # no temp files left behind


def test_cache_remembers_which_entries_are_blank(tmp_path: Path, count_reads: Any) -> None:
    filled = _volume(tmp_path / "v.npy")
    constant = tmp_path / "c.npy"
    np.save(constant, np.full((4, 16, 16), 7.0, np.float32))
    cache = VolumeCache(tmp_path / "cache", (4, 16, 16), (1, 99))
    assert [cache.is_blank(filled), cache.is_blank(constant)] == [False, True]
    assert count_reads.calls == 2
    # Another process answers from the markers alone: even without the entries it reads nothing.
    cache.entry_path(filled).unlink()
    cache.entry_path(constant).unlink()
    again = VolumeCache(tmp_path / "cache", (4, 16, 16), (1, 99))
    assert [again.is_blank(filled), again.is_blank(constant)] == [False, True]
    assert count_reads.calls == 2


def test_cache_rereads_a_changed_source(tmp_path: Path, count_reads: Any) -> None:
    src = _volume(tmp_path / "v.npy", seed=0)
    cache = VolumeCache(tmp_path / "cache", (4, 16, 16), (1, 99))
    cache.load(src)
    st = src.stat()
    _volume(src, seed=1)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    got = cache.load(src)
    assert count_reads.calls == 2
    np.testing.assert_array_equal(got, preprocess(np.load(src), (4, 16, 16), (1, 99)))


def test_cache_separates_preprocessing_params(tmp_path: Path, count_reads: Any) -> None:
    src = _volume(tmp_path / "v.npy")
    a = VolumeCache(tmp_path / "cache", (4, 16, 16), (1, 99)).load(src)
    b = VolumeCache(tmp_path / "cache", (2, 8, 8), (1, 99)).load(src)
    c = VolumeCache(tmp_path / "cache", (4, 16, 16), (0, 100)).load(src)
    assert count_reads.calls == 3
    assert a.shape == (4, 16, 16) and b.shape == (2, 8, 8)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b"garbage"),  # not an .npy
        lambda p: p.write_bytes(p.read_bytes()[:-100]),  # truncated
        lambda p: np.save(p, np.zeros((2, 2, 2), np.float32)),  # wrong shape
        lambda p: np.save(p, np.zeros((4, 16, 16), np.float64)),  # wrong dtype
    ],
    ids=["garbage", "truncated", "wrong-shape", "wrong-dtype"],
)
def test_corrupt_cache_entry_is_rebuilt(tmp_path: Path, count_reads: Any,
                                        damage: Callable[[Path], object]) -> None:
    src = _volume(tmp_path / "v.npy")
    cache = VolumeCache(tmp_path / "cache", (4, 16, 16), (1, 99))
    good = cache.load(src)
    damage(cache.entry_path(src))
    np.testing.assert_array_equal(cache.load(src), good)
    assert count_reads.calls == 2
    np.testing.assert_array_equal(np.load(cache.entry_path(src)), good)  # repaired on disk
    cache.load(src)
    assert count_reads.calls == 2


def test_cache_dir_that_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="file/sub.*data.cache_dir"):
        VolumeCache(tmp_path / "file" / "sub", (2, 4, 4), (1, 99))


def test_unreadable_source_is_a_data_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"junk")
    with pytest.raises(DataError, match="bad.npy"):
        VolumeCache(tmp_path / "cache", (2, 4, 4), (1, 99)).load(bad)
    assert not list((tmp_path / "cache").iterdir())


def test_atomic_save_replaces(tmp_path: Path) -> None:
    target = tmp_path / "x.npy"
    pp.atomic_save_npy(target, np.zeros(3, np.float32))
    pp.atomic_save_npy(target, np.ones(3, np.float32))
    np.testing.assert_array_equal(np.load(target), np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["x.npy"]


def test_nonfinite_replace_sets_nan_and_inf_to_zero_in_its_own_cache_entries(
        tmp_path: Path) -> None:
    src = tmp_path / "v.npy"
    volume = np.arange(4 * 16 * 16, dtype=np.float32).reshape(4, 16, 16)
    volume[0, 0, :2] = [np.nan, np.inf]
    np.save(src, volume)
    with pytest.raises(DataError, match=r"v.npy: volume holds 2 NaN or infinite value\(s\)"):
        VolumeCache(tmp_path / "cache", (4, 16, 16), (0, 100)).load(src)  # data.nonfinite: error
    cache = VolumeCache(tmp_path / "cache", (4, 16, 16), (0, 100), replace_nonfinite=True)
    out = cache.load(src)
    assert np.isfinite(out).all() and out[0, 0, 0] == 0.0 and out[0, 0, 1] == 0.0
    assert cache.was_replaced(src)
    # the replaced entry is never served to a run that refuses non-finite volumes
    with pytest.raises(DataError):
        VolumeCache(tmp_path / "cache", (4, 16, 16), (0, 100)).load(src)
    assert replace_nonfinite(np.array([1.0, np.nan, -np.inf], dtype=np.float32)) == 2
