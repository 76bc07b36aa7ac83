"""octtrain.data.readers: every format written with its own library and read back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from octtrain.data.readers import natural_key, read_volume, volume_stem, volume_suffix
from octtrain.errors import DataError

# (D, H, W) = (3 B-scans, 4 rows, 5 columns), every voxel distinct so any transposition shows.
VOL = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5) * 4


def _write_dicom(path: Path, pixels: np.ndarray, samples: int = 1) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.77.1.5.4")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    frames = pixels.shape[0] if pixels.ndim == 3 + (samples > 1) else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-2 - (samples > 1)], pixels.shape[-1 - (samples > 1)]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _png_dir(path: Path, vol: np.ndarray, names: Callable[[int], str]) -> Path:
    path.mkdir()
    for i, bscan in enumerate(vol):
        Image.fromarray(bscan).save(path / names(i))
    return path


def _npy(d: Path) -> Path:
    np.save(d / "v.npy", VOL)
    return d / "v.npy"


def _npz_single(d: Path) -> Path:
    np.savez(d / "v.npz", anything=VOL)
    return d / "v.npz"


def _npz_volume(d: Path) -> Path:
    np.savez(d / "v.npz", volume=VOL, mask=VOL > 3)
    return d / "v.npz"


def _nifti(name: str) -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        # NIfTI (x, y, z) = (lateral, axial, B-scan) = (W, H, D).
        nib.save(nib.Nifti1Image(VOL.transpose(2, 1, 0).copy(), np.eye(4)), d / name)
        return d / name
    return write


def _tiff(name: str) -> Callable[[Path], Path]:
    def write(d: Path) -> Path:
        tifffile.imwrite(d / name, VOL, photometric="minisblack")  # one page per B-scan
        return d / name
    return write


def _dcm(d: Path) -> Path:
    _write_dicom(d / "v.dcm", VOL)
    return d / "v.dcm"


def _image_dir(suffix: str) -> Callable[[Path], Path]:
    return lambda d: _png_dir(d / "scans", VOL, lambda i: f"b{i}{suffix}")


WRITERS: dict[str, Callable[[Path], Path]] = {
    "npy": _npy, "npz-single": _npz_single, "npz-volume": _npz_volume,
    "nii": _nifti("v.nii"), "nii.gz": _nifti("v.nii.gz"),
    "tif": _tiff("v.tif"), "TIFF": _tiff("v.TIFF"), "dcm": _dcm,
    "png-dir": _image_dir(".png"), "bmp-dir": _image_dir(".bmp"), "tif-dir": _image_dir(".tif"),
}


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    got = read_volume(WRITERS[fmt](tmp_path))
    assert got.dtype == np.float32
    assert got.shape == (3, 4, 5)
    np.testing.assert_array_equal(got, VOL.astype(np.float32))


def test_nifti_axes_by_hand(tmp_path: Path) -> None:
    data = np.zeros((5, 4, 3), np.int16)  # (x=W, y=H, z=D)
    data[4, 1, 2] = 7  # lateral 4, axial row 1, B-scan 2
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "a.nii.gz")
    got = read_volume(tmp_path / "a.nii.gz")
    assert got.shape == (3, 4, 5)
    assert got[2, 1, 4] == 7 and got.sum() == 7


def test_nifti_drops_trailing_singleton_axis(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(VOL.transpose(2, 1, 0)[..., None].copy(), np.eye(4)),
             tmp_path / "a.nii")
    np.testing.assert_array_equal(read_volume(tmp_path / "a.nii"), VOL)


def test_nifti_applies_scaling(tmp_path: Path) -> None:
    image = nib.Nifti1Image(VOL.transpose(2, 1, 0).astype(np.int16), np.eye(4))
    image.header.set_slope_inter(2.0, 1.0)
    nib.save(image, tmp_path / "a.nii")
    np.testing.assert_allclose(read_volume(tmp_path / "a.nii"), VOL * 2.0 + 1.0)


def test_directory_sorts_naturally_and_ignores_other_files(tmp_path: Path) -> None:
    vol = np.stack([np.full((2, 3), 10 * i, np.uint8) for i in range(12)])
    d = _png_dir(tmp_path / "scans", vol, lambda i: f"bscan_{i}.png")  # bscan_10 after _9
    (d / "notes.txt").write_text("not a B-scan")
    Image.fromarray(vol[0]).save(d / ".hidden.png")
    got = read_volume(d)
    assert got[:, 0, 0].tolist() == [10.0 * i for i in range(12)]


def test_directory_of_jpegs(tmp_path: Path) -> None:
    vol = np.stack([np.full((8, 8), 30 * i, np.uint8) for i in range(3)])  # lossless if flat
    got = read_volume(_png_dir(tmp_path / "scans", vol, lambda i: f"{i}.JPG"))
    np.testing.assert_allclose(got, vol, atol=1)


def test_directory_rgb_becomes_luminance(tmp_path: Path) -> None:
    d = tmp_path / "scans"
    d.mkdir()
    Image.new("RGB", (3, 2), (100, 150, 200)).save(d / "0.png")
    got = read_volume(d)
    # ITU-R 601-2: 0.299*100 + 0.587*150 + 0.114*200 = 140.75 (PIL rounds to an integer)
    assert got.shape == (1, 2, 3)
    assert abs(float(got[0, 0, 0]) - 140.75) <= 1.0


def test_directory_16_bit_png_keeps_values(tmp_path: Path) -> None:
    d = tmp_path / "scans"
    d.mkdir()
    Image.fromarray(np.array([[0, 1000], [40000, 65535]], np.uint16)).save(d / "0.png")
    assert read_volume(d)[0].tolist() == [[0.0, 1000.0], [40000.0, 65535.0]]


def test_tiff_rgb_pages_become_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((2, 3, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 150, 200
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    got = read_volume(tmp_path / "c.tif")
    assert got.shape == (2, 3, 4)
    np.testing.assert_allclose(got, 140.75, atol=1e-3)


def test_dicom_single_frame_is_one_bscan_when_allowed(tmp_path: Path) -> None:
    _write_dicom(tmp_path / "one.dcm", VOL[1])
    np.testing.assert_array_equal(read_volume(tmp_path / "one.dcm", allow_single_bscan=True),
                                  VOL[1:2])
    with pytest.raises(DataError, match=r"one.dcm: 2-D array of shape \(4, 5\) is one B-scan"):
        read_volume(tmp_path / "one.dcm")


def test_dicom_rgb_becomes_luminance(tmp_path: Path) -> None:
    rgb = np.zeros((2, 3, 4, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 150, 200
    _write_dicom(tmp_path / "c.dcm", rgb, samples=3)
    assert pydicom.dcmread(tmp_path / "c.dcm").pixel_array.shape == (2, 3, 4, 3)
    np.testing.assert_allclose(read_volume(tmp_path / "c.dcm"), np.full((2, 3, 4), 140.75),
                               atol=1e-3)


@pytest.mark.parametrize(
    "shape,expected",
    [((4, 5), (1, 4, 5)), ((2, 4, 5), (2, 4, 5))],
)
def test_two_d_array_is_one_bscan_when_allowed(tmp_path: Path, shape: tuple[int, ...],
                                               expected: tuple[int, ...]) -> None:
    np.save(tmp_path / "a.npy", np.ones(shape, np.float64))
    got = read_volume(tmp_path / "a.npy", allow_single_bscan=True)
    assert got.shape == expected and got.dtype == np.float32


def test_two_d_array_is_refused_by_default(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.ones((4, 5)))
    with pytest.raises(DataError) as err:
        read_volume(tmp_path / "a.npy")
    assert str(err.value) == (f"{tmp_path / 'a.npy'}: 2-D array of shape (4, 5) is one B-scan, "
                              "not a (D, H, W) volume; set data.allow_single_bscan: true to "
                              "train on it")
    assert read_volume(tmp_path / "a.npy", allow_single_bscan=True).shape == (1, 4, 5)


@pytest.mark.parametrize(("value", "dtype"), [(np.nan, np.float32), (np.inf, np.float64),
                                              (-np.inf, np.float16), (1e300, np.float64)])
def test_non_finite_values_are_refused_naming_the_file(tmp_path: Path, value: float,
                                                       dtype: type) -> None:
    array = np.ones((2, 3, 4), dtype)
    array[1, 2, 3] = value
    array[0, 0, 0] = value
    np.save(tmp_path / "v.npy", array)
    with pytest.raises(DataError) as err:
        read_volume(tmp_path / "v.npy")
    assert str(err.value) == f"{tmp_path / 'v.npy'}: volume holds 2 NaN or infinite value(s) of 24"


@pytest.mark.parametrize(
    "array,message",
    [
        (np.zeros((2, 2, 2, 2)), "shape (2, 2, 2, 2)"),
        (np.zeros(7), "shape (7,)"),
        (np.zeros((0, 4, 4)), "empty"),
        (np.array([["a", "b"]]), "non-numeric"),
    ],
)
def test_wrong_rank_empty_or_non_numeric(tmp_path: Path, array: np.ndarray, message: str) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(DataError, match="bad.npy") as err:
        read_volume(path)
    assert message in str(err.value)


CORRUPT = [".npy", ".npz", ".nii", ".nii.gz", ".tif", ".tiff", ".dcm"]


@pytest.mark.parametrize("suffix", CORRUPT)
def test_corrupt_file_names_the_path(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00\x01not really a volume" * 3)
    with pytest.raises(DataError) as err:
        read_volume(path)
    assert str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_npy_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "cut.npy"
    np.save(path, VOL)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="cut.npy"):
        read_volume(path)


def test_npz_without_volume_key(tmp_path: Path) -> None:
    np.savez(tmp_path / "two.npz", a=VOL, b=VOL)
    with pytest.raises(DataError, match=r"two\.npz.*'a', 'b'"):
        read_volume(tmp_path / "two.npz")


def test_corrupt_bscan_in_directory_names_the_image(tmp_path: Path) -> None:
    d = _png_dir(tmp_path / "scans", VOL, lambda i: f"b{i}.png")
    (d / "b1.png").write_bytes(b"garbage")
    with pytest.raises(DataError) as err:
        read_volume(d)
    assert str(d / "b1.png") in str(err.value)


def test_bscans_of_different_shapes(tmp_path: Path) -> None:
    d = _png_dir(tmp_path / "scans", VOL, lambda i: f"b{i}.png")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(d / "b2.png")
    with pytest.raises(DataError, match=r"b2\.png.*\(9, 9\)"):
        read_volume(d)


def test_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty.*no B-scan images"):
        read_volume(tmp_path / "empty")


def test_unknown_suffix_lists_formats(tmp_path: Path) -> None:
    path = tmp_path / "scan.mha"
    path.write_bytes(b"x")
    with pytest.raises(DataError) as err:
        read_volume(path)
    assert str(path) in str(err.value)
    for fmt in (".npy", ".npz", ".nii.gz", ".tif", ".dcm", "directory"):
        assert fmt in str(err.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.npy.*not found"):
        read_volume(tmp_path / "nope.npy")


@pytest.mark.parametrize(
    "names,expected",
    [
        (["b10.png", "b9.png", "b1.png"], ["b1.png", "b9.png", "b10.png"]),
        (["B2", "a10", "a2"], ["a2", "a10", "B2"]),
        (["10", "9a", "x"], ["9a", "10", "x"]),
        (["s1_10", "s1_2", "s01_3"], ["s1_2", "s01_3", "s1_10"]),
    ],
)
def test_natural_key(names: list[str], expected: list[str]) -> None:
    assert sorted(names, key=natural_key) == expected


@pytest.mark.parametrize(
    "name,suffix,stem",
    [("a.nii.gz", ".nii.gz", "a"), ("P1_x.NII.GZ", ".nii.gz", "P1_x"), ("v.npy", ".npy", "v"),
     ("scans", "", "scans"), ("a.b.tif", ".tif", "a.b"), ("x.txt", ".txt", "x.txt")],
)
def test_suffix_and_stem(name: str, suffix: str, stem: str) -> None:
    assert volume_suffix(name) == suffix
    assert volume_stem(name) == stem
