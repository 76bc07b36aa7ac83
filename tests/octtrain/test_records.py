"""octtrain.data.records: manifest / folder indexing, patient-grouped stratified splits, class_to_idx."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from octtrain.config.sections import DataSection
from octtrain.data.records import (
    class_to_idx_from_names,
    index_folder,
    load_class_to_idx,
    majority_label,
    patient_id_from_stem,
    read_manifest,
    save_class_to_idx,
    split_counts,
    split_records,
    stratified_patient_split,
)
from octtrain.errors import DataError


@pytest.mark.parametrize(
    "names,expected",
    [
        (["fluid", "drusen", "normal", "drusen"], {"drusen": 0, "fluid": 1, "normal": 2}),
        (["10", "2", "1"], {"1": 0, "2": 1, "10": 2}),  # numeric, not "10" < "2"
        (["-1", "3", "0"], {"-1": 0, "0": 1, "3": 2}),
        (["10", "2", "a"], {"10": 0, "2": 1, "a": 2}),  # not all integers: text order
        (["1_drusen", "0_normal", "3_atrophy", "2_fluid"],
         {"0_normal": 0, "1_drusen": 1, "2_fluid": 2, "3_atrophy": 3}),
    ],
)
def test_class_to_idx_from_names(names: list[str], expected: dict[str, int]) -> None:
    got = class_to_idx_from_names(names)
    assert got == expected
    assert list(got) == list(expected)


@pytest.mark.parametrize(
    "stem,patient",
    [("P001_OD_2019", "P001"), ("P001_v2", "P001"), ("scan7", "scan7"), ("_x", "_x"),
     ("a_", "a"), ("p0003_v1", "p0003")],
)
def test_patient_id_from_stem(stem: str, patient: str) -> None:
    assert patient_id_from_stem(stem) == patient


@pytest.mark.parametrize(
    "labels,expected", [([2, 2, 1], 2), ([1, 2], 1), ([3], 3), ([0, 3, 3, 0], 0)],
)
def test_majority_label(labels: list[int], expected: int) -> None:
    assert majority_label(labels) == expected


@pytest.mark.parametrize(
    "n,val,test,expected",
    [
        (10, 0.15, 0.15, (6, 2, 2)),  # 1.5 rounds half up
        (84, 0.15, 0.15, (58, 13, 13)),
        (12, 0.15, 0.15, (8, 2, 2)),
        (3, 0.15, 0.15, (1, 1, 1)),  # a small class still reaches val and test
        (4, 0.15, 0.15, (2, 1, 1)),
        (3, 0.0, 0.15, (2, 0, 1)),  # no val wanted: none forced
        (2, 0.15, 0.15, (2, 0, 0)),  # < 3 patients: rounding only
        (2, 0.5, 0.4, (1, 1, 0)),  # train keeps one; test gives way first
        (1, 0.5, 0.4, (1, 0, 0)),
        (5, 0.0, 0.0, (5, 0, 0)),
    ],
)
def test_split_counts(n: int, val: float, test: float, expected: tuple[int, int, int]) -> None:
    assert split_counts(n, val, test) == expected


def _patients() -> dict[str, int]:
    # 40 patients of class 0, 6 of class 1, 3 of class 2, 2 of class 3
    out = {f"a{i}": 0 for i in range(40)}
    out.update({f"b{i}": 1 for i in range(6)})
    out.update({f"c{i}": 2 for i in range(3)})
    out.update({f"d{i}": 3 for i in range(2)})
    return out


def test_stratified_patient_split_counts_per_class() -> None:
    labels = _patients()
    split = stratified_patient_split(labels, 0.15, 0.15, seed=0)
    assert set(split) == set(labels)
    per_class = Counter((labels[p], s) for p, s in split.items())
    for label, n in Counter(labels.values()).items():
        train, val, test = split_counts(n, 0.15, 0.15)
        assert (per_class[label, "train"], per_class[label, "val"],
                per_class[label, "test"]) == (train, val, test)
    assert per_class[2, "val"] == 1  # 3 patients: one reaches val
    assert per_class[3, "val"] == 0 and per_class[3, "train"] == 2


def test_stratified_patient_split_is_deterministic_and_order_free() -> None:
    labels = _patients()
    shuffled = dict(sorted(labels.items(), key=lambda kv: hash(kv[0]) % 97))
    a = stratified_patient_split(labels, 0.15, 0.15, seed=4)
    assert stratified_patient_split(shuffled, 0.15, 0.15, seed=4) == a
    others = [stratified_patient_split(labels, 0.15, 0.15, seed=s) for s in range(5, 9)]
    assert any(o != a for o in others)


# ---------------------------------------------------------------------------------------------
# Manifests
# ---------------------------------------------------------------------------------------------


def _dataset(root: Path, rows: list[tuple[str, str, str]] | list[tuple[str, str, str, str]],
             header: str = "path,label,patient_id") -> Path:
    """Write tiny .npy volumes for every row and a manifest in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for row in rows:
        vol = root / row[0]
        vol.parent.mkdir(parents=True, exist_ok=True)
        np.save(vol, np.zeros((2, 4, 4), np.float32))
    lines = [header] + [",".join(r) for r in rows]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root / "manifest.csv"


def test_manifest_paths_are_relative_to_the_manifest(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _dataset(tmp_path / "data", [("vols/a.npy", "x", "p1"), ("b.npy", "y", "p2")])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    entries = read_manifest(Path("..") / "data" / "manifest.csv")
    assert [e.path for e in entries] == [str(tmp_path / "data" / "vols" / "a.npy"),
                                        str(tmp_path / "data" / "b.npy")]
    assert [(e.label, e.patient_id, e.split) for e in entries] == [("x", "p1", None),
                                                                  ("y", "p2", None)]
    assert manifest.exists()


def test_manifest_absolute_paths_bom_spaces_and_extra_columns(tmp_path: Path) -> None:
    vol = tmp_path / "v.npy"
    np.save(vol, np.zeros((2, 2, 2)))
    text = f"\ufeffpath, label, patient_id, note\n{vol}, a, P7, anything\n"
    (tmp_path / "m.csv").write_text(text, encoding="utf-8")
    (entry,) = read_manifest(tmp_path / "m.csv")
    assert (entry.path, entry.label, entry.patient_id) == (str(vol), "a", "P7")


def test_given_split_column_is_used_verbatim(tmp_path: Path) -> None:
    rows = [("a.npy", "x", "p1", "train"), ("b.npy", "y", "p2", "train"),
            ("c.npy", "x", "p3", "val"), ("d.npy", "y", "p4", "test"),
            ("e.npy", "x", "p1", "train")]
    manifest = _dataset(tmp_path, rows, "path,label,patient_id,split")
    records, mapping = split_records(DataSection(manifest=str(manifest)))
    assert mapping == {"x": 0, "y": 1}
    assert [(Path(r.path).name, r.label, r.patient_id) for r in records["train"]] == [
        ("a.npy", 0, "p1"), ("b.npy", 1, "p2"), ("e.npy", 0, "p1")]
    assert [Path(r.path).name for r in records["val"]] == ["c.npy"]
    assert [Path(r.path).name for r in records["test"]] == ["d.npy"]


H = "path,label,patient_id\n"
HS = "path,label,patient_id,split\n"
MANIFEST_ERRORS = [
    # (manifest text, expected message fragment); volumes a.npy and b.npy exist
    ("", "manifest is empty"),
    ("path,label\na.npy,x\n", "missing column(s) 'patient_id'"),
    (H, "header but no rows"),
    (HS + "a.npy,x,p1,training\n", "line 2: unknown split value 'training'"),
    (HS + "a.npy,x,p1,train\nb.npy,x,p2,\n", "line 3: unknown split value ''"),
    (H + "a.npy,,p1\n", "line 2: empty 'label'"),
    (H + "a.npy,x,\n", "line 2: empty 'patient_id'"),
    (H + "a.npy,x,p1\nmissing.npy,x,p2\n", "line 3: volume 'missing.npy' not found"),
    (H + "a.npy,x,p1\na.npy,x,p1\n", "line 3: volume 'a.npy' is listed again (first on line 2)"),
    (HS + "a.npy,x,p1,train\nb.npy,y,p2,val\n", "line 3: label 'y' never occurs in the train"),
    (HS + "a.npy,x,p1,train\nb.npy,x,p1,val\n",
     "line 3: patient 'p1' is in split 'val' but also in 'train'"),
]


@pytest.mark.parametrize("text,message", MANIFEST_ERRORS)
def test_manifest_errors_name_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    for name in ("a.npy", "b.npy"):
        np.save(tmp_path / name, np.zeros((2, 2, 2)))
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(DataError) as err:
        split_records(DataSection(manifest=str(manifest)))
    assert str(manifest) in str(err.value)
    assert message in str(err.value)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.csv: manifest not found"):
        split_records(DataSection(manifest=str(tmp_path / "nope.csv")))


def test_computed_split_is_grouped_and_stratified(tmp_path: Path) -> None:
    # 30 patients of "n" with 2 volumes each, 4 of "r" with 2 volumes each
    rows = [(f"n{p}_{v}.npy", "n", f"n{p}") for p in range(30) for v in range(2)]
    rows += [(f"r{p}_{v}.npy", "r", f"r{p}") for p in range(4) for v in range(2)]
    manifest = _dataset(tmp_path, rows)
    records, _ = split_records(DataSection(manifest=str(manifest), val_fraction=0.2,
                                          test_fraction=0.1, split_seed=1))
    patients = {s: {r.patient_id for r in rs} for s, rs in records.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert sum(len(rs) for rs in records.values()) == len(rows)
    counts = {s: Counter(r.label for r in rs) for s, rs in records.items()}
    # n: 30 patients → 6 val, 3 test; r: 4 patients → 1 val (rounded 0.8), 1 test (forced)
    assert counts["val"] == {0: 12, 1: 2}
    assert counts["test"] == {0: 6, 1: 2}
    assert counts["train"] == {0: 42, 1: 4}


def test_patient_with_mixed_labels_goes_by_majority(tmp_path: Path) -> None:
    rows = [("a.npy", "x", "p1"), ("b.npy", "x", "p1"), ("c.npy", "y", "p1"),
            ("d.npy", "y", "p2")]
    manifest = _dataset(tmp_path, rows)
    records, _ = split_records(DataSection(manifest=str(manifest), val_fraction=0.0,
                                          test_fraction=0.0))
    assert len(records["train"]) == 4


def test_given_class_to_idx_is_used(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path, [("a.npy", "x", "p1"), ("b.npy", "y", "p2")])
    cfg = DataSection(manifest=str(manifest), val_fraction=0.0, test_fraction=0.0)
    records, mapping = split_records(cfg, {"y": 0, "x": 1, "z": 2})
    assert mapping == {"y": 0, "x": 1, "z": 2}
    assert [r.label for r in records["train"]] == [1, 0]
    with pytest.raises(DataError, match=r"line 3: label 'y' is not a known class \(x\)"):
        split_records(cfg, {"x": 0})


# ---------------------------------------------------------------------------------------------
# Folder per class
# ---------------------------------------------------------------------------------------------


def test_index_folder(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for rel in ("normal/P1_OD.npy", "normal/P1_OS.nii.gz", "normal/P10.npy", "normal/P2_a.npy",
                "fluid/P3_x.tif"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")  # indexing does not read volumes
    (root / "fluid" / "P4_scans").mkdir()  # a directory of B-scans
    (root / "fluid" / "notes.txt").write_text("ignored")
    (root / "fluid" / ".DS_Store").write_text("ignored")
    (root / ".hidden").mkdir()
    (root / "manifest.csv").write_text("files at the root are ignored")
    entries = index_folder(root)
    assert [(Path(e.path).name, e.label, e.patient_id) for e in entries] == [
        ("P3_x.tif", "fluid", "P3"), ("P4_scans", "fluid", "P4"),
        ("P1_OD.npy", "normal", "P1"), ("P1_OS.nii.gz", "normal", "P1"),
        ("P2_a.npy", "normal", "P2"), ("P10.npy", "normal", "P10"),
    ]


@pytest.mark.parametrize(
    "layout,message",
    [
        ([], "no class folders"),
        (["a/readme.txt"], "a: class folder holds no volumes"),
    ],
)
def test_index_folder_errors(tmp_path: Path, layout: list[str], message: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    for rel in layout:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    with pytest.raises(DataError, match=message):
        index_folder(root)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope: data root not found"):
        split_records(DataSection(root=str(tmp_path / "nope")))


# ---------------------------------------------------------------------------------------------
# class_to_idx persistence
# ---------------------------------------------------------------------------------------------


def test_class_to_idx_round_trip(tmp_path: Path) -> None:
    mapping = {"2": 0, "10": 1, "a": 2}
    save_class_to_idx(tmp_path / "run" / "class_to_idx.json", mapping)
    assert load_class_to_idx(tmp_path / "run" / "class_to_idx.json") == mapping
    assert json.loads((tmp_path / "run" / "class_to_idx.json").read_text()) == mapping
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["class_to_idx.json"]


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "cannot read class_to_idx"),
        ("[1, 2]", "must be a non-empty JSON object"),
        ("{}", "must be a non-empty JSON object"),
        ('{"a": 0, "b": "1"}', "key 'b': index must be an integer, got '1'"),
        ('{"a": 0, "b": true}', "key 'b': index must be an integer, got True"),
        ('{"a": 0, "b": 2}', "class indices must be 0..1 once each, got [0, 2]"),
    ],
)
def test_load_class_to_idx_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        load_class_to_idx(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_load_missing_class_to_idx(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="c.json: class_to_idx file not found"):
        load_class_to_idx(tmp_path / "c.json")


def test_save_rejects_bad_mapping(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="class indices must be 0..1"):
        save_class_to_idx(tmp_path / "c.json", {"a": 1, "b": 1})
    assert not (tmp_path / "c.json").exists()


# ---------------------------------------------------------------------------------------------
# data.classes
# ---------------------------------------------------------------------------------------------


def test_pinned_classes_number_in_list_order(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path, [("a.npy", "normal", "p1"), ("b.npy", "fluid", "p2")])
    cfg = DataSection(manifest=str(manifest), val_fraction=0.0, test_fraction=0.0,
                      classes=["normal", "fluid"])
    records, mapping = split_records(cfg)
    assert mapping == {"normal": 0, "fluid": 1}
    assert [r.label for r in records["train"]] == [0, 1]


def test_a_label_outside_the_pinned_classes_names_where_it_first_appears(tmp_path: Path) -> None:
    manifest = _dataset(tmp_path, [("a.npy", "normal", "p1"), ("b.npy", "nromal", "p2"),
                                   ("c.npy", "fluid", "p3"), ("d.npy", "nromal", "p4"),
                                   ("e.npy", "fliud", "p5")])
    cfg = DataSection(manifest=str(manifest), classes=["normal", "fluid"])
    with pytest.raises(DataError) as err:
        split_records(cfg)
    assert str(err.value) == (
        "label(s) not in data.classes ['normal', 'fluid']: "
        f"'nromal' (first in {manifest} line 3); 'fliud' (first in {manifest} line 6)")


def test_a_misspelled_class_folder_is_refused_with_pinned_classes(tmp_path: Path) -> None:
    for rel in ("normal/P1.npy", "normal/P2.npy", "fluid/P3.npy", "fliud/P4.npy"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / rel, np.zeros((2, 4, 4), np.float32))
    cfg = DataSection(root=str(tmp_path), classes=["normal", "fluid"])
    with pytest.raises(DataError) as err:
        split_records(cfg)
    assert str(err.value) == ("label(s) not in data.classes ['normal', 'fluid']: "
                              f"'fliud' (first in {tmp_path / 'fliud' / 'P4.npy'})")
    _, mapping = split_records(DataSection(root=str(tmp_path)))
    assert mapping == {"fliud": 0, "fluid": 1, "normal": 2}  # unpinned: an extra class
