"""octtrain.data.formats: real-format files built by third-party definitions, read back.

``.vol`` files are built by eyepy's own ``vol_format`` (``octtrain.synthetic.heyex_vol`` holds the
workarounds for eyepy 0.21's writer), Duke ``.mat`` files by ``scipy.io.savemat`` in the published
key and axis layout (what eyepy's ``import_duke_mat`` reads). No library here writes ``.e2e`` or
``.fda``: for those only the rules octtrain adds (volume selection, errors) are tested.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from octtrain.data import formats, read_manifest
from octtrain.data.preprocess import source_stamp
from octtrain.data.readers import read_volume, volume_stem, volume_suffix
from octtrain.errors import DataError
from octtrain.synthetic.heyex_vol import write_heyex_vol
from octtrain.synthetic.phantom import LesionParams, draw_anatomy, render_volume

eyepy = pytest.importorskip("eyepy", reason="the formats extra (eyepy) is not installed")


def _phantom(label: int = 1, shape: tuple[int, int, int] = (4, 32, 32)) -> np.ndarray:
    rng = np.random.default_rng([7, label])
    lesions = LesionParams().scaled(shape, 1.0)
    clean = render_volume(label, draw_anatomy(rng, 0.2), shape, rng, lesions=lesions)
    return np.round(clean * 255).astype(np.uint8)


def _marked(shape: tuple[int, int, int] = (4, 32, 32)) -> np.ndarray:
    """Zeros with a 3-row x 8-column block at the top left of B-scan 0 and a 2 x 2 dot at the
    bottom right of the last B-scan: a transposition, a flip or a reversed B-scan order moves
    one of them."""
    vol = np.zeros(shape, np.uint8)
    vol[0, :3, :8] = 250
    vol[-1, -2:, -2:] = 120
    return vol


# ---------------------------------------------------------------------------------------------
# Heidelberg .vol
# ---------------------------------------------------------------------------------------------


def test_vol_round_trip_equals_the_phantom(tmp_path: Path) -> None:
    phantom = _phantom()
    path = write_heyex_vol(tmp_path / "p.vol", phantom)
    got = read_volume(path)
    assert got.dtype == np.float32 and got.shape == (4, 32, 32)
    np.testing.assert_array_equal(got, phantom.astype(np.float32))


def test_vol_values_are_the_documented_display_transform_of_the_stored_raw(tmp_path: Path) -> None:
    """The file holds float32 reflectivity; octtrain returns round(255 * clip((log(raw +
    2.44e-4) + 8.3) / 8.285, 0, 1)), computed here by hand from the bytes eyepy parses."""
    from eyepy.io.he import HeVolReader

    path = write_heyex_vol(tmp_path / "p.vol", _phantom(2))
    raw = np.stack([b.data for b in HeVolReader(path).parsed_file.bscans])
    assert raw.dtype == np.float32 and raw.min() > 0 and raw.max() <= 1
    display = np.rint(255 * np.clip((np.log(raw + 2.44e-4) + 8.3) / 8.285, 0, 1))
    np.testing.assert_array_equal(read_volume(path), display.astype(np.float32))


def test_vol_keeps_bscan_order_rows_and_columns(tmp_path: Path) -> None:
    marked = _marked()
    got = read_volume(write_heyex_vol(tmp_path / "m.vol", marked))
    assert (got[0, :3, :8] == 250).all() and got[0].sum() == 250 * 24
    assert (got[-1, -2:, -2:] == 120).all() and got[-1].sum() == 120 * 4
    assert got[1:-1].sum() == 0


def test_vol_header_gives_patient_and_eye(tmp_path: Path) -> None:
    path = write_heyex_vol(tmp_path / "h.vol", _marked(), patient_id="P-017", laterality="OS")
    assert formats.header_info(path) == formats.HeaderInfo("P-017", "OS")
    blank = write_heyex_vol(tmp_path / "b.vol", _marked(), patient_id="", laterality="")
    assert formats.header_info(blank) == formats.HeaderInfo(None, None)


def test_truncated_vol_is_one_line_naming_the_file(tmp_path: Path) -> None:
    data = write_heyex_vol(tmp_path / "ok.vol", _marked()).read_bytes()
    cut = tmp_path / "cut.vol"
    cut.write_bytes(data[:-100])
    with pytest.raises(DataError, match=r"cut\.vol: truncated HEYEX \.vol: \d+ bytes, its header "
                       r"describes \d+ \(4 B-scans of 32 x 32"):
        read_volume(cut)
    short = tmp_path / "short.vol"
    short.write_bytes(data[:300])  # not even the 2 KB header
    with pytest.raises(DataError, match=r"short\.vol: truncated or not a HEYEX \.vol \(header"):
        read_volume(short)


def test_corrupt_vol_is_a_data_error(tmp_path: Path) -> None:
    data = bytearray(write_heyex_vol(tmp_path / "ok.vol", _marked()).read_bytes())
    data[16:20] = (1_000_000).to_bytes(4, "little")  # size_y: a B-scan of a million rows
    bad = tmp_path / "bad.vol"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"bad\.vol: truncated HEYEX \.vol") as err:
        read_volume(bad)
    assert "\n" not in str(err.value)


def test_missing_eyepy_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_heyex_vol(tmp_path / "v.vol", _marked())
    for name in [n for n in sys.modules if n == "eyepy" or n.startswith("eyepy.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(DataError, match=r"v\.vol: reading \.vol files needs eyepy .*"
                       r"pip install 'octsearch\[formats\]'"):
        read_volume(path)


# ---------------------------------------------------------------------------------------------
# Duke .mat
# ---------------------------------------------------------------------------------------------


def _duke_mat(path: Path, volume: np.ndarray, **extra: object) -> Path:
    """The Duke SD-OCT AMD layout: ``images`` (rows, columns, B-scans), ``layerMaps``
    (B-scans, columns, 3 boundaries), ``Age``."""
    d, _, w = volume.shape
    arrays = {"images": np.moveaxis(volume, 0, -1), "layerMaps": np.full((d, w, 3), np.nan),
              "Age": np.array([[71.0]]), **extra}
    scipy.io.savemat(path, arrays)
    return path


def test_duke_mat_reads_as_eyepy_does(tmp_path: Path) -> None:
    marked = _marked((3, 32, 40))
    path = _duke_mat(tmp_path / "AMD_Subject_1001.mat", marked)
    got = read_volume(path)
    np.testing.assert_array_equal(got, marked.astype(np.float32))
    np.testing.assert_array_equal(got, np.asarray(eyepy.import_duke_mat(path).data, np.float32))


def test_duke_mat_needs_only_images(tmp_path: Path) -> None:
    path = tmp_path / "bare.mat"
    scipy.io.savemat(path, {"images": np.moveaxis(_marked(), 0, -1)})
    np.testing.assert_array_equal(read_volume(path), _marked().astype(np.float32))


def test_mat_without_images_or_truncated_is_one_line(tmp_path: Path) -> None:
    other = tmp_path / "other.mat"
    scipy.io.savemat(other, {"vol": np.zeros((4, 4, 4)), "label": np.array([[1]])})
    with pytest.raises(DataError, match=r"other\.mat: \.mat holds no 'images' array .*found vol, label"):
        read_volume(other)
    flat = tmp_path / "flat.mat"
    scipy.io.savemat(flat, {"images": np.zeros((4, 4))})
    with pytest.raises(DataError, match=r"flat\.mat: 'images' must be rows x columns x B-scans"):
        read_volume(flat)
    data = _duke_mat(tmp_path / "ok.mat", _marked()).read_bytes()
    cut = tmp_path / "cut.mat"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.mat: cannot read volume") as err:
        read_volume(cut)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# E2E selection and the rest (no writer: octtrain's own rules only)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [("OD", "OD"), ("r", "OD"), ("Right", "OD"), ("OS\x00", "OS"),
                                            ("L", "OS"), ("", None), (None, None), ("OU", None)])
def test_laterality_spellings(value: object, expected: str | None) -> None:
    assert formats.normalize_laterality(value) == expected


def test_e2e_laterality_as_eyepy_gives_it() -> None:
    """eyepy's E2E reader returns str() of its LateralityEnum: "82"/"76" on Python >= 3.11."""
    from eyepy.io.he.e2e_format import LateralityEnum

    assert formats.normalize_laterality(str(LateralityEnum.OD)) == "OD"
    assert formats.normalize_laterality(str(LateralityEnum.OS)) == "OS"


def test_e2e_selector_is_part_of_the_path_not_the_suffix() -> None:
    assert formats.split_selector("a/scan.E2E#volume=12") == (Path("a/scan.E2E"), 12)
    assert formats.split_selector("a/scan.vol#volume=1") == (Path("a/scan.vol#volume=1"), None)
    assert volume_suffix("x/scan.e2e#volume=1") == ".e2e"
    assert volume_stem("x/scan.e2e#volume=1") == "scan"


class _FakeVolume:
    def __init__(self, value: int) -> None:
        self.data = np.full((2, 16, 16), value, np.uint8)


class _FakeE2eReader:
    """Stands in for eyepy's HeE2eReader (nothing here can write an E2E file): a file of two
    OCT volumes, as eyepy lists them."""

    def __init__(self, path: Path) -> None:
        self.volumes = [_FakeVolume(10), _FakeVolume(20)]

    def __enter__(self) -> _FakeE2eReader:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def test_multi_volume_e2e_is_refused_unless_one_is_chosen(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import eyepy.io.he

    monkeypatch.setattr(eyepy.io.he, "HeE2eReader", _FakeE2eReader)
    path = tmp_path / "two.e2e"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"two\.e2e: E2E file holds 2 OCT volumes; choose one as "
                       r"two\.e2e#volume=K with K in 0\.\.1"):
        read_volume(path)
    assert read_volume(f"{path}#volume=1").max() == 20
    with pytest.raises(DataError, match=r"two\.e2e#volume=2: E2E file holds 2 OCT volume\(s\); "
                       r"volume=2 is not one of 0\.\.1"):
        read_volume(f"{path}#volume=2")
    with pytest.raises(DataError, match=r"gone\.e2e#volume=0: volume not found"):
        read_volume(tmp_path / "gone.e2e#volume=0")
    # A manifest row names one volume of the file; its cache stamp is the file's.
    (tmp_path / "m.csv").write_text("path,label,patient_id\ntwo.e2e#volume=1,x,P1\n")
    assert [e.path for e in read_manifest(tmp_path / "m.csv")] == [f"{path}#volume=1"]
    assert source_stamp(Path(f"{path}#volume=1")) == source_stamp(path)


def test_unreadable_e2e_and_fda_are_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.e2e"
    junk.write_bytes(b"not an e2e file" * 10)
    with pytest.raises(DataError, match=r"junk\.e2e: E2E file holds no OCT volume eyepy can read"):
        read_volume(junk)
    fda = tmp_path / "scan.fda"
    fda.write_bytes(b"\0" * 64)
    # Without oct-converter (the fda extra, not installed for the tests) the extra is named;
    # with it, oct-converter's own error on 64 zero bytes.
    with pytest.raises(DataError, match=r"scan\.fda: (reading \.fda files needs oct_converter .*"
                       r"pip install 'octsearch\[fda\]'|cannot read volume)") as err:
        read_volume(fda)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# Manifests: an empty patient_id cell of a HEYEX file is its header's
# ---------------------------------------------------------------------------------------------


def test_manifest_patient_from_the_vol_header(tmp_path: Path) -> None:
    write_heyex_vol(tmp_path / "a.vol", _marked(), patient_id="P9")
    np.save(tmp_path / "b.npy", _marked())
    (tmp_path / "m.csv").write_text("path,label,patient_id\na.vol,x,\nb.npy,y,P2\n")
    assert [e.patient_id for e in read_manifest(tmp_path / "m.csv")] == ["P9", "P2"]
    (tmp_path / "n.csv").write_text("path,label,patient_id\nb.npy,y,\n")
    with pytest.raises(DataError, match=r"n\.csv line 2: empty 'patient_id' and b\.npy has no "
                       r"header that names the patient"):
        read_manifest(tmp_path / "n.csv")
