"""octtrain.data.index and ``octtrain index``: a manifest from a mixed folder and a label sheet,
checked by reading the manifest back the way training does."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from octtrain.cli import main
from octtrain.data import build_index, read_manifest, read_volume
from octtrain.errors import DataError
from octtrain.synthetic.heyex_vol import write_heyex_vol

pytest.importorskip("eyepy", reason="the formats extra (eyepy) is not installed")

VOL = (np.arange(2 * 16 * 16) % 251).astype(np.uint8).reshape(2, 16, 16)


def _mat(path: Path) -> Path:
    scipy.io.savemat(path, {"images": np.moveaxis(VOL, 0, -1)})  # Duke: rows x columns x B-scans
    return path


def _pngs(folder: Path, ext: str = ".png") -> Path:
    folder.mkdir(parents=True)
    for i, bscan in enumerate(VOL):
        Image.fromarray(bscan).save(folder / f"bscan_{i}{ext}")
    return folder


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as f:
        return list(csv.DictReader(f))


def test_mixed_folder_labels_from_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "AMD").mkdir(parents=True)
    (root / "Control").mkdir()
    _mat(root / "AMD" / "Farsiu_Ophthalmology_2013_AMD_Subject_1001.mat")
    write_heyex_vol(root / "AMD" / "scan_17.vol", VOL, patient_id="HP2", laterality="OS")
    np.save(root / "Control" / "p3_v0.npy", VOL)
    _pngs(root / "Control" / "p4_scan")
    (root / "Control" / "notes.txt").write_text("not a volume")
    report = build_index(root)
    got = {v.relative: (v.label, v.patient_id, v.laterality) for v in report.volumes}
    assert got == {
        "AMD/Farsiu_Ophthalmology_2013_AMD_Subject_1001.mat": ("AMD", "Farsiu", ""),
        "AMD/scan_17.vol": ("AMD", "HP2", "OS"),  # from the HEYEX header
        "Control/p3_v0.npy": ("Control", "p3", ""),
        "Control/p4_scan": ("Control", "p4", ""),  # a B-scan folder is one volume
    }
    assert report.class_counts() == {"AMD": 2, "Control": 2}
    out = tmp_path / "out" / "manifest.csv"
    assert main(["index", "--root", str(root), "--out", str(out)]) == 0
    entries = read_manifest(out)
    assert sorted(e.patient_id for e in entries) == ["Farsiu", "HP2", "p3", "p4"]
    for e in entries:  # every row is a volume training can read, equal to what was written
        np.testing.assert_array_equal(read_volume(e.path), VOL.astype(np.float32))


def test_sheet_with_a_missing_and_an_extra_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_heyex_vol(root / "a.vol", VOL, patient_id="HA", laterality="OD")
    np.save(root / "b.npy", VOL)
    _mat(root / "c.mat")
    sheet = tmp_path / "labels.csv"
    sheet.write_text("volume,label,patient_id\na,drusen,SHEET-A\nb,normal,\nzz,normal,Z\n")
    out = tmp_path / "manifest.csv"
    argv = ["index", "--root", str(root), "--labels", str(sheet), "--out", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == ("octtrain: error: 1 volume(s) have no label (first: c.mat); label them "
                                    "or pass --allow-unlabelled to leave them out of manifest.csv")
    assert not out.exists()
    assert "3 volumes, 2 classes" in captured.out
    assert "volumes without a label: 1: c.mat" in captured.out
    assert "sheet rows matching no volume: 1: zz" in captured.out
    assert "a.vol: patient id 'SHEET-A' in the sheet, 'HA' in its header" in captured.out
    assert main([*argv, "--allow-unlabelled"]) == 0
    assert _rows(out) == [
        {"path": "root/a.vol", "label": "drusen", "patient_id": "SHEET-A", "laterality": "OD"},
        {"path": "root/b.npy", "label": "normal", "patient_id": "b", "laterality": ""},
    ]
    assert [e.patient_id for e in read_manifest(out)] == ["SHEET-A", "b"]


def test_xlsx_sheet_with_numeric_ids_and_named_columns(tmp_path: Path) -> None:
    """An OCTA-500-like layout: one folder of BMP B-scans per subject, named by a number that
    the Excel sheet holds as a number."""
    openpyxl = pytest.importorskip("openpyxl")
    root = tmp_path / "OCT"
    for subject in (10001, 10002):
        _pngs(root / str(subject), ".bmp")
    book = openpyxl.Workbook()
    book.active.append(["ID", "Gender", "Disease"])
    book.active.append([10001, "M", "NORMAL"])
    book.active.append([10002, "F", "AMD"])
    book.save(tmp_path / "labels.xlsx")
    out = tmp_path / "m.csv"
    assert main(["index", "--root", str(root), "--labels", str(tmp_path / "labels.xlsx"),
                 "--key-column", "ID", "--label-column", "Disease", "--out", str(out)]) == 0
    assert [(r["path"], r["label"], r["patient_id"]) for r in _rows(out)] == [
        ("OCT/10001", "NORMAL", "10001"), ("OCT/10002", "AMD", "10002")]


def test_sheet_problems_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    np.save(root / "b.npy", VOL)
    sheet = tmp_path / "s.csv"
    sheet.write_text("subject,diagnosis\nb,normal\n")
    with pytest.raises(DataError, match=r"s\.csv: no label column 'label' \(columns: subject, diagnosis\)"):
        build_index(root, sheet)
    with pytest.raises(DataError, match=r"s\.csv: no column names the volumes"):
        build_index(root, sheet, label_column="diagnosis")
    assert build_index(root, sheet, key_column="subject", label_column="diagnosis").class_counts() == {"normal": 1}
    write_heyex_vol(root / "cut.vol", VOL)
    (root / "cut.vol").write_bytes((root / "cut.vol").read_bytes()[:300])
    assert main(["index", "--root", str(root), "--out", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("octtrain: error: ") and "cut.vol: truncated or not a HEYEX .vol" in err
    assert len(err.splitlines()) == 1
