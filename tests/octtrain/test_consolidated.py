"""octtrain.data.consolidated: one memory-mapped data set per host, built once, never used half-written
or stale; and ``octtrain prepare``, which builds it ahead of the trials."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from full_disk import FullDisk
from PIL import Image

from octtrain.cli import main
from octtrain.config.sections import DataSection
from octtrain.data.consolidated import ConsolidatedStore, open_store, store_key
from octtrain.data.dataset import Splits, build_datasets
from octtrain.data.preprocess import preprocess
from octtrain.data.records import Record
from octtrain.errors import DataError


def _cfg(tmp_path: Path, manifest: Path) -> DataSection:
    return DataSection(manifest=str(manifest), frames=4, height=16, width=16,
                       cache_dir=str(tmp_path / "cache"))


def _digest(splits: Splits) -> str:
    """A hash of every volume of every split as the datasets serve them."""
    h = hashlib.sha256()
    for ds in (splits.train, splits.val, splits.test):
        for record in ds.records:
            h.update(ds.cache.load(record.path).tobytes())
    return h.hexdigest()


def _store_dir(tmp_path: Path) -> Path:
    (found,) = [d for d in (tmp_path / "cache" / "consolidated").iterdir() if d.is_dir()]
    return found


BUILD_SCRIPT = """
import json, os, sys, time
from pathlib import Path
from octtrain.data import readers
from octtrain.data.dataset import build_datasets
from octtrain.config.sections import DataSection
sys.path.insert(0, sys.argv[3])
from test_consolidated import _digest

reads = []
real = readers.read_volume
def slow(path, **options):  # a build of 32 x 20 ms: the other process arrives during it
    reads.append(path)
    time.sleep(0.02)
    return real(path, **options)
readers.read_volume = slow
barrier = Path(sys.argv[4])
(barrier / str(os.getpid())).touch()
while len(list(barrier.iterdir())) < 2:  # both processes start building together
    time.sleep(0.01)
cfg = DataSection(manifest=sys.argv[1], frames=4, height=16, width=16, cache_dir=sys.argv[2])
print(json.dumps({"digest": _digest(build_datasets(cfg)), "count": len(reads)}))
"""


def test_two_concurrent_processes_build_the_store_once_and_read_the_same_data(
        tiny_manifest: Path, tmp_path: Path) -> None:
    script = tmp_path / "build.py"
    script.write_text(textwrap.dedent(BUILD_SCRIPT))
    args = [sys.executable, str(script), str(tiny_manifest), str(tmp_path / "cache"),
            str(Path(__file__).parent), str(tmp_path / "barrier")]
    (tmp_path / "barrier").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]),  # the repo
                                                        str(Path(__file__).parents[1]),  # tests/
                                                        os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0, stderr[-3000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert sorted(o["count"] for o in outs) == [0, 32]  # one built, the other waited and mapped
    assert outs[0]["digest"] == outs[1]["digest"]
    assert _digest(build_datasets(_cfg(tmp_path, tiny_manifest))) == outs[0]["digest"]
    assert [p.name for p in (tmp_path / "cache" / "consolidated").iterdir()
            if p.is_dir()] == [_store_dir(tmp_path).name]  # no temporary directory left


BUILD_ON_FULL_DISK = """
import json, sys
from octtrain.config.sections import DataSection
from octtrain.data.dataset import build_datasets
from octtrain.errors import HostError
try:
    build_datasets(DataSection(manifest=sys.argv[1], frames=4, height=32, width=32, cache_dir=sys.argv[2]))
except HostError as err:
    print(json.dumps({"message": str(err), "path": str(err.path)}))
"""


def test_a_store_the_disk_has_no_room_for_is_one_host_error_and_no_temporary_directory(
        tiny_manifest: Path, full_disk: Callable[[int], FullDisk]) -> None:
    # The store is a memory map: written through the map, a block the disk has no room for
    # is SIGBUS (the process dies, its temporary directory stays), not an OSError.
    disk = full_disk(64 * 1024)  # the store of 32 volumes of 4 x 32 x 32 float16: 256 kB
    proc = disk.run([sys.executable, "-c", BUILD_ON_FULL_DISK, str(tiny_manifest), str(disk.path)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    store = Path(out["path"])
    assert store.parent == disk.path / "consolidated"
    assert out["message"] == f"{disk.cause} writing the consolidated data set {store}"
    assert [p.suffix for p in (disk.kept / "consolidated").iterdir()] == [".lock"]


def test_a_corrupted_or_truncated_store_is_rebuilt(tiny_manifest: Path, tmp_path: Path,
                                                   count_reads: Any) -> None:
    cfg = _cfg(tmp_path, tiny_manifest)
    expected = _digest(build_datasets(cfg))
    assert count_reads.calls == 32
    volumes = _store_dir(tmp_path) / "volumes.npy"
    data = bytearray(volumes.read_bytes())
    data[-100] ^= 0xFF  # one flipped byte of one volume
    volumes.write_bytes(bytes(data))
    assert _digest(build_datasets(cfg)) == expected
    assert count_reads.calls == 64
    volumes.write_bytes(volumes.read_bytes()[:-1000])  # truncated
    assert _digest(build_datasets(cfg)) == expected
    assert count_reads.calls == 96
    assert _digest(build_datasets(cfg)) == expected  # valid now: mapped, not rebuilt
    assert count_reads.calls == 96


def test_a_store_missing_its_index_is_rebuilt(tiny_manifest: Path, tmp_path: Path,
                                              count_reads: Any) -> None:
    """A directory without its index (as a crash in a manual copy would leave) is not a store."""
    cfg = _cfg(tmp_path, tiny_manifest)
    expected = _digest(build_datasets(cfg))
    (_store_dir(tmp_path) / "index.json").unlink()
    assert _digest(build_datasets(cfg)) == expected and count_reads.calls == 64


def test_a_changed_source_file_gives_a_new_store(tiny_manifest: Path, tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, tiny_manifest)
    splits = build_datasets(cfg)
    first = _store_dir(tmp_path)
    path = Path(splits.train.records[0].path)
    array = np.load(path)
    np.save(path, np.ascontiguousarray(array[::-1]))  # new content, new size/mtime stamp
    try:
        again = build_datasets(cfg)
        stores = sorted(d for d in (tmp_path / "cache" / "consolidated").iterdir() if d.is_dir())
        assert len(stores) == 2 and first in stores
        assert not np.array_equal(again.train.cache.load(str(path)), splits.train.cache.load(str(path)))
    finally:
        np.save(path, array)  # the manifest is shared by the session


def test_the_store_pickles_without_its_array_for_dataloader_workers(tiny_manifest: Path,
                                                                    tmp_path: Path) -> None:
    splits = build_datasets(_cfg(tmp_path, tiny_manifest))
    store = splits.train.cache
    assert isinstance(store, ConsolidatedStore)
    store.load(splits.train.records[0].path)  # maps the array in this process
    assert len(pickle.dumps(store)) < 10_000  # the array is not in the pickle
    loader = torch.utils.data.DataLoader(splits.val, batch_size=3, num_workers=2)
    batches = [x for x, _ in loader]
    assert torch.equal(torch.cat(batches), torch.stack([splits.val[i][0] for i in range(len(splits.val))]))


def test_prepare_builds_the_store_that_training_then_maps(tiny_manifest: Path, tmp_path: Path,
                                                          capsys: Any, count_reads: Any) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(json.dumps({"data": {"manifest": str(tiny_manifest), "frames": 4,
                                           "height": 16, "width": 16,
                                           "cache_dir": str(tmp_path / "cache")}}))
    assert main(["prepare", "--config", str(config), "--set", "data.store=uint8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("32 volumes of 4 x 16 x 16 (uint8, ") and str(_store_dir(tmp_path)) in out
    assert np.load(_store_dir(tmp_path) / "volumes.npy", mmap_mode="r").dtype == np.uint8
    assert count_reads.calls == 32
    build_datasets(DataSection(**{**_cfg(tmp_path, tiny_manifest).__dict__, "store": "uint8"}))
    assert count_reads.calls == 32  # mapped, not rebuilt


# The store's key and its errors, volume by volume (what octtrain.data.preprocess's per-volume cache
# was tested for before the consolidated store replaced it).

SHAPE, CLIP = (4, 16, 16), (1.0, 99.0)


def _volume(path: Path, seed: int = 0) -> Path:
    np.save(path, np.random.default_rng(seed).random((6, 20, 24)).astype(np.float32))
    return path


def _open(tmp_path: Path, *sources: Path, replace_nonfinite: bool = False) -> ConsolidatedStore:
    records = [Record(str(s), 0, f"p{i}") for i, s in enumerate(sources)]
    return open_store(tmp_path / "cache", records, {0: "a"}, SHAPE, CLIP, "float32",
                      replace_nonfinite=replace_nonfinite)


def test_the_store_key_changes_with_every_input(tmp_path: Path) -> None:
    src = _volume(tmp_path / "a.npy")
    key = lambda *paths, **kw: store_key([str(p) for p in paths], kw.get("shape", SHAPE),  # noqa: E731
                                         kw.get("clip", CLIP), kw.get("dtype", "float32"),
                                         kw.get("nonfinite", False))
    base = key(src)
    assert key(src) == base  # stable
    others = [key(src, shape=(4, 16, 8)), key(src, clip=(0.5, 99)), key(src, dtype="float16"),
              key(src, nonfinite=True), key(_volume(tmp_path / "b.npy"))]  # same content, other path
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # mtime
    others.append(key(src))
    with src.open("ab") as f:  # size
        f.write(b"\0")
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    others.append(key(src))
    assert len({base, *others}) == len(others) + 1
    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(3):
        Image.fromarray(np.full((4, 4), i, np.uint8)).save(scans / f"{i}.png")
    before = key(scans)
    Image.fromarray(np.full((5, 5), 9, np.uint8)).save(scans / "1.png")  # one B-scan edited
    assert key(scans) != before


def test_a_missing_or_unreadable_volume_is_a_data_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="gone.npy: volume not found or not readable"):
        _open(tmp_path, tmp_path / "gone.npy")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"junk")
    with pytest.raises(DataError, match="bad.npy"):
        _open(tmp_path, bad)


def test_a_cache_dir_that_cannot_be_created_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("a file, not a folder")
    with pytest.raises(DataError, match="cannot create the data set cache.*data.cache_dir"):
        _open(tmp_path, _volume(tmp_path / "v.npy"))


def test_nonfinite_values_are_refused_or_replaced_in_a_store_of_their_own(tmp_path: Path) -> None:
    src = tmp_path / "v.npy"
    volume = np.arange(4 * 16 * 16, dtype=np.float32).reshape(SHAPE)
    volume[0, 0, :2] = [np.nan, np.inf]
    np.save(src, volume)
    with pytest.raises(DataError, match=r"v.npy: volume holds 2 NaN or infinite value\(s\)"):
        _open(tmp_path, src)  # data.nonfinite: error
    store = _open(tmp_path, src, replace_nonfinite=True)
    out = store.load(str(src))
    assert np.isfinite(out).all() and out[0, 0, 0] == 0.0 and store.was_replaced(str(src))
    with pytest.raises(DataError):  # the replaced store is never served to a refusing run
        _open(tmp_path, src)


def test_a_constant_volume_is_blank_and_others_are_not(tmp_path: Path) -> None:
    constant = tmp_path / "c.npy"
    np.save(constant, np.full(SHAPE, 7.0, np.float32))
    filled = _volume(tmp_path / "v.npy")
    store = _open(tmp_path, constant, filled)
    assert [store.is_blank(str(constant)), store.is_blank(str(filled))] == [True, False]
    np.testing.assert_array_equal(store.load(str(filled)), preprocess(np.load(filled), SHAPE, CLIP))
