"""octtrain.synthetic.writer: the class plan, the data set on disk in every format, re-runs."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from octtrain.data.readers import read_volume
from octtrain.data.records import index_folder, read_manifest
from octtrain.errors import DataError
from octtrain.synthetic.phantom import CLASS_NAMES
from octtrain.synthetic.writer import FORMATS, class_counts, make_synthetic

SMALL = {"frames": 2, "height": 16, "width": 16}


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as f:
        return list(csv.DictReader(f))


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
        ({"fmt": "jpeg"}, "format must be one of npy, npz, nifti, tiff, dicom, png-folder, vol, "
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


def test_rerun_after_an_interrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import octtrain.synthetic.writer as synthetic

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
