"""octtrain.synthetic: phantom geometry, class plan, files in every format, CLI hooks."""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from octtrain.errors import DataError
from octtrain.readers import read_volume
from octtrain.records import index_folder, read_manifest
from octtrain.synthetic import (
    CLASS_NAMES,
    FORMATS,
    LesionParams,
    add_arguments,
    class_counts,
    draw_anatomy,
    make_synthetic,
    render_volume,
    run_from_args,
)

SMALL = {"frames": 2, "height": 16, "width": 16}


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# Lesion geometry, measured in noise-free renders (same anatomy and random stream per class)
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Planning and files
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,shares,expected",
    [
        (240, (0.7, 0.1, 0.1, 0.1), [168, 24, 24, 24]),
        (32, (0.7, 0.1, 0.1, 0.1), [23, 3, 3, 3]),
        (10, (0.7, 0.1, 0.1, 0.1), [7, 1, 1, 1]),
        (7, (0.7, 0.1, 0.1, 0.1), [5, 1, 1, 0]),  # remainders .9, .7, .7, .7: ties → low index
        (6, (0.25, 0.25, 0.25, 0.25), [2, 2, 1, 1]),
    ],
)
def test_class_counts(n: int, shares: tuple[float, ...], expected: list[int]) -> None:
    assert class_counts(n, shares) == expected
    assert sum(class_counts(n, shares)) == n


def test_make_synthetic_layout_and_patients(tmp_path: Path) -> None:
    manifest = make_synthetic(tmp_path / "d", n_volumes=20, volumes_per_patient=3, seed=1,
                              **SMALL)  # type: ignore[arg-type]
    assert manifest == tmp_path / "d" / "manifest.csv"
    rows = _rows(manifest)
    assert Counter(r["label"] for r in rows) == {"0_normal": 14, "1_drusen": 2, "2_fluid": 2,
                                                 "3_atrophy": 2}
    by_patient: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        by_patient[r["patient_id"]].add(r["label"])
        assert (manifest.parent / r["path"]).is_file()
        assert r["path"].startswith(r["label"] + "/" + r["patient_id"] + "_v")
    assert all(len(labels) == 1 for labels in by_patient.values())  # one class per patient
    sizes = Counter(r["patient_id"] for r in rows)
    # 0_normal: 14 = 3+3+3+3+2 volumes in 5 patients; the others one patient of 2 each
    assert sorted(sizes.values()) == [2, 2, 2, 2, 3, 3, 3, 3]
    meta = json.loads((tmp_path / "d" / "classes.json").read_text())
    assert [c["name"] for c in meta["classes"]] == list(CLASS_NAMES)
    assert [c["volumes"] for c in meta["classes"]] == [14, 2, 2, 2]
    assert meta["params"]["seed"] == 1 and meta["params"]["difficulty"] == 1.0
    entries = read_manifest(manifest)
    assert [(e.label, e.patient_id) for e in entries] == [(r["label"], r["patient_id"])
                                                         for r in rows]


def test_folder_index_agrees_with_manifest(tmp_path: Path) -> None:
    manifest = make_synthetic(tmp_path / "d", n_volumes=12, volumes_per_patient=2, **SMALL)  # type: ignore[arg-type]
    from_manifest = {(e.path, e.label, e.patient_id) for e in read_manifest(manifest)}
    from_folder = {(e.path, e.label, e.patient_id) for e in index_folder(tmp_path / "d")}
    assert from_folder == from_manifest


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = make_synthetic(tmp_path / "a", n_volumes=8, seed=5, **SMALL)  # type: ignore[arg-type]
    b = make_synthetic(tmp_path / "b", n_volumes=8, seed=5, **SMALL)  # type: ignore[arg-type]
    c = make_synthetic(tmp_path / "c", n_volumes=8, seed=6, **SMALL)  # type: ignore[arg-type]
    assert a.read_text() == b.read_text()
    for r in _rows(a):
        assert (a.parent / r["path"]).read_bytes() == (b.parent / r["path"]).read_bytes()
        assert (a.parent / r["path"]).read_bytes() != (c.parent / r["path"]).read_bytes()


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "npy"])
def test_every_format_reads_back_identical_volumes(tmp_path: Path, fmt: str) -> None:
    shares = (0.25, 0.25, 0.25, 0.25)
    ref = make_synthetic(tmp_path / "npy", n_volumes=4, class_shares=shares, **SMALL)  # type: ignore[arg-type]
    got = make_synthetic(tmp_path / fmt, n_volumes=4, class_shares=shares, fmt=fmt, **SMALL)  # type: ignore[arg-type]
    for r_ref, r_got in zip(_rows(ref), _rows(got), strict=True):
        assert (r_ref["label"], r_ref["patient_id"]) == (r_got["label"], r_got["patient_id"])
        expected = read_volume(ref.parent / r_ref["path"])
        assert expected.shape == (2, 16, 16)
        np.testing.assert_array_equal(read_volume(got.parent / r_got["path"]), expected)


def test_rerun_replaces_an_earlier_set(tmp_path: Path) -> None:
    make_synthetic(tmp_path / "d", n_volumes=12, volumes_per_patient=1, **SMALL)  # type: ignore[arg-type]
    manifest = make_synthetic(tmp_path / "d", n_volumes=4, class_shares=(0.25,) * 4, **SMALL)  # type: ignore[arg-type]
    assert len(_rows(manifest)) == 4
    assert len(list((tmp_path / "d").glob("*/*.npy"))) == 4  # no stale volumes


def test_refuses_a_foreign_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        make_synthetic(tmp_path, n_volumes=4, class_shares=(0.25,) * 4, **SMALL)  # type: ignore[arg-type]
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"class_shares": (0.7, 0.2, 0.2)}, "needs 4 values"),
        ({"class_shares": (0.7, 0.1, 0.1, 0.2)}, "sum to 1, got (0.7, 0.1, 0.1, 0.2) (sum 1.1)"),
        ({"class_shares": (1.0, 0.0, 0.0, 0.0)}, "must be > 0 each"),
        ({"n_volumes": 7}, "n_volumes=7 is too small"),
        ({"n_volumes": 3}, "n_volumes=3 is too small"),
        ({"volumes_per_patient": 0}, "volumes_per_patient must be >= 1, got 0"),
        ({"difficulty": 0.0}, "difficulty must be > 0, got 0.0"),
        ({"noise": -0.1}, "noise must be >= 0, got -0.1"),
        ({"anatomy_variation": -1.0}, "anatomy_variation must be >= 0, got -1.0"),
        ({"fmt": "jpeg"}, "format must be one of npy, npz, nifti, tiff, dicom, png-folder, "
                          "got 'jpeg'"),
        ({"height": 8}, "height=8"),
    ],
)
def test_bad_requests(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    args = {**SMALL, "n_volumes": 8, **kwargs}
    with pytest.raises(DataError) as err:
        make_synthetic(tmp_path / "d", **args)  # type: ignore[arg-type]
    assert message in str(err.value)
    assert not (tmp_path / "d").exists()  # nothing written


def test_bad_lesion_params() -> None:
    with pytest.raises(DataError, match="drusen_height must be >= 0, got -1"):
        LesionParams(drusen_height=-1)
    with pytest.raises(DataError, match=r"drusen_count.*\(3, 2\)"):
        LesionParams(drusen_count=(3, 2))


# ---------------------------------------------------------------------------------------------
# CLI hooks
# ---------------------------------------------------------------------------------------------


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_run_from_args(tmp_path: Path) -> None:
    args = _parse(["--out", str(tmp_path / "d"), "--n-volumes", "8", "--frames", "2",
                   "--height", "16", "--width", "16", "--class-shares", "0.25,0.25,0.25,0.25",
                   "--volumes-per-patient", "1", "--difficulty", "2", "--noise", "0.1",
                   "--format", "npz", "--seed", "4", "--anatomy-variation", "0.5",
                   "--lesion", "drusen_height=3",
                   "--lesion", "drusen_count=1,1"])
    manifest = run_from_args(args)
    assert manifest == tmp_path / "d" / "manifest.csv"
    rows = _rows(manifest)
    assert len(rows) == 8 and all(r["path"].endswith(".npz") for r in rows)
    params = json.loads((tmp_path / "d" / "classes.json").read_text())["params"]
    assert params["lesions_reference"]["drusen_height"] == 3.0
    assert params["lesions_reference"]["drusen_count"] == [1, 1]
    assert params["lesions_scaled"]["drusen_height"] == 3.0 * 16 / 64 / 2
    assert (params["difficulty"], params["noise"], params["seed"]) == (2.0, 0.1, 4)
    assert params["anatomy_variation"] == 0.5


def test_defaults_match_make_synthetic() -> None:
    args = _parse(["--out", "x"])
    assert (args.n_volumes, args.frames, args.height, args.width, args.class_shares,
            args.volumes_per_patient, args.difficulty, args.format, args.seed) == (
        720, 16, 64, 64, "0.7,0.1,0.1,0.1", 2, 1.0, "npy", 0)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--class-shares", "0.7,0.1,x,0.1"], "got '0.7,0.1,x,0.1'"),
        (["--class-shares", "0.5,0.5"], "needs 4 values"),
        (["--lesion", "drusen_size=3"], "got 'drusen_size=3'"),
        (["--lesion", "fluid_width=wide"], "fluid_width: bad value 'wide'"),
    ],
)
def test_cli_bad_values(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(DataError) as err:
        run_from_args(_parse(["--out", str(tmp_path / "d"), *argv]))
    assert message in str(err.value)


def test_rerun_after_an_interrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import octtrain.synthetic as synthetic

    real = synthetic.write_volume
    calls = []

    def crash_on_third(*args: object, **kwargs: object) -> Path:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(synthetic, "write_volume", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        make_synthetic(tmp_path / "d", n_volumes=8, **SMALL)  # type: ignore[arg-type]
    monkeypatch.setattr(synthetic, "write_volume", real)
    manifest = make_synthetic(tmp_path / "d", n_volumes=8, **SMALL)  # type: ignore[arg-type]
    assert len(_rows(manifest)) == 8
