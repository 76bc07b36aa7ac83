"""One memory-mapped array of every preprocessed volume of a data set, shared by all trials of
a host.

A search runs many trials on one data set; each used to read and preprocess every volume (or
load one ``.npy`` per volume from the cache). :func:`open_store` instead builds, once per
(volumes, preprocessing) key, a directory in ``<data.cache_dir>/consolidated/`` holding

* ``volumes.npy``: an ``(N, T, H, W)`` array at the fixed shape, stored as ``data.store``:
  ``float16`` (default; largest error 2⁻¹² ≈ 0.00024 for values in ``[0, 1]``), ``uint8``
  (``round(255·x)``, largest error 1/510 ≈ 0.002, half the size) or ``float32`` (exact);
* ``index.json``: the source path, class name and patient id of each row, which rows are
  blank (constant), the array's CRC-32 and the key;

and every trial maps it (``np.load(mmap_mode="r")``): the page cache holds it once per host,
workers read rows without copying the file, nothing is preprocessed again.

Concurrent trials build it once: the builder holds an exclusive ``flock`` on ``<dir>.lock``, a
process that finds no valid store waits for the lock and then looks again. A store is written
in a temporary directory and renamed into place, so a half-written one is never used; one
that does not match its index (truncated, bytes changed: CRC-32) is rebuilt. A change of any
source file (size or mtime), of the shape, the clip or the dtype is a new key, so a stale store
is never served.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from octtrain.data import readers
from octtrain.data.preprocess import preprocess, source_stamp
from octtrain.data.preprocess import replace_nonfinite as zero_nonfinite
from octtrain.data.records import Record
from octtrain.errors import DataError, host_errors

STORE_VERSION = 1  # bump when the layout or the preprocessing changes
_CRC_CHUNK = 64 << 20  # bytes hashed at a time


def store_key(paths: Sequence[str], shape: Sequence[int], clip: Sequence[float], dtype: str,
              replace_nonfinite: bool = False) -> str:
    """Hex digest of the sources (paths and size/mtime stamps), the shape, the clip, the dtype,
    and ``data.nonfinite: replace`` where set (a run that refuses NaN volumes never gets a
    store built with them replaced)."""
    ident = {"sources": [[p, source_stamp(Path(p))] for p in paths],
             "shape": [int(s) for s in shape], "clip": [float(c) for c in clip],
             "dtype": dtype, "version": STORE_VERSION}
    if replace_nonfinite:
        ident["nonfinite"] = "replace"
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


class ConsolidatedStore:
    """A built store, opened read-only; :meth:`load` and :meth:`is_blank` by source path.

    The memory map is opened lazily in each process (a DataLoader worker that receives this
    object pickled maps the file itself instead of receiving a copy of the array).
    """

    def __init__(self, directory: Path, index: Mapping[str, Any]) -> None:
        self.directory = directory
        self.rows = {path: i for i, path in enumerate(index["paths"])}
        self.blank = [bool(b) for b in index["blank"]]
        self.replaced = [bool(b) for b in index.get("replaced", [False] * len(self.blank))]
        self.scale = 255.0 if index["dtype"] == "uint8" else 1.0
        self._array: np.ndarray | None = None

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.directory / "volumes.npy", mmap_mode="r")
        return self._array

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}

    def load(self, path: str | os.PathLike[str]) -> np.ndarray:
        """Float32 ``(T, H, W)`` in ``[0, 1]`` for the volume at ``path``."""
        row = np.array(self.array[self.rows[str(path)]], dtype=np.float32)  # a copy: writable
        return row / self.scale if self.scale != 1.0 else row

    def is_blank(self, path: str | os.PathLike[str]) -> bool:
        return self.blank[self.rows[str(path)]]

    def was_replaced(self, path: str | os.PathLike[str]) -> bool:
        """Whether the volume's NaN/inf values were replaced by 0 (``data.nonfinite: replace``)."""
        return self.replaced[self.rows[str(path)]]


def open_store(cache_dir: Path, records: Sequence[Record], names: Mapping[int, str],
               shape: Sequence[int], clip: Sequence[float], dtype: str,
               allow_single_bscan: bool = False,
               replace_nonfinite: bool = False) -> ConsolidatedStore:
    """The store of these volumes, built first if no valid one exists (by this process or,
    while this one waits for the lock, by another). ``names``: class index → class name."""
    records = sorted({r.path: r for r in records}.values(), key=lambda r: r.path)
    paths = [r.path for r in records]
    try:
        key = store_key(paths, shape, clip, dtype, replace_nonfinite)
    except OSError as err:
        raise DataError(f"{err.filename}: volume not found or not readable ({err.strerror})") from None
    final = cache_dir / "consolidated" / f"{key[:32]}"
    store = _open_valid(final, key)
    if store is not None:
        return store
    try:
        with host_errors("the data set cache", final.parent):
            final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # not the host's (e.g. data.cache_dir is a file): the config's
        raise DataError(f"{final.parent}: cannot create the data set cache ({err.strerror}); "
                        "set data.cache_dir to a writable folder") from None
    with _locked(final.with_suffix(".lock")):
        store = _open_valid(final, key)  # built by another process while this one waited
        if store is None:
            shutil.rmtree(final, ignore_errors=True)  # invalid: corrupted or half-deleted
            _build(final, key, records, names, shape, clip, dtype, allow_single_bscan,
                   replace_nonfinite)
            store = _open_valid(final, key)
    if store is None:
        raise DataError(f"{final}: the consolidated data set just built does not read back")
    return store


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with host_errors("the data set cache's lock", path):
        handle = open(path, "a")  # noqa: SIM115 - closed by the with below
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
        yield


def _open_valid(directory: Path, key: str) -> ConsolidatedStore | None:
    """The store in ``directory`` when its index, array shape, dtype and CRC-32 all match."""
    try:
        index = json.loads((directory / "index.json").read_text())
        array = np.load(directory / "volumes.npy", mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return None
    rows = len(index.get("paths", []))
    if (index.get("key") != key or array.dtype != np.dtype(index.get("dtype"))
            or array.shape != (rows, *index.get("shape", ())) or _crc32(array) != index.get("crc32")):
        return None
    return ConsolidatedStore(directory, index)


def _crc32(array: np.ndarray) -> int:
    flat = array.reshape(-1).view(np.uint8)
    crc = 0
    for start in range(0, flat.size, _CRC_CHUNK):
        crc = zlib.crc32(flat[start:start + _CRC_CHUNK].tobytes(), crc)
    return crc


def _allocate(path: Path) -> None:
    """Give the (sparse) file at ``path`` its disk blocks now: a full disk is then an OSError
    (ENOSPC) here, where a write through the memory map to a block the disk has no room for
    would kill the process with SIGBUS."""
    with open(path, "r+b") as handle:
        os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)


def _build(final: Path, key: str, records: Sequence[Record], names: Mapping[int, str],
           shape: Sequence[int], clip: Sequence[float], dtype: str, allow_single_bscan: bool,
           replace_nonfinite: bool) -> None:
    """Read, preprocess and write every volume into a temporary directory, then rename it. A
    write the host fails (full disk, ...) is a HostError, any other OSError a DataError."""
    tmp: Path | None = None
    try:
        with host_errors("the consolidated data set", final):
            tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
            out = np.lib.format.open_memmap(tmp / "volumes.npy", mode="w+", dtype=np.dtype(dtype),
                                            shape=(len(records), *(int(s) for s in shape)))
            _allocate(tmp / "volumes.npy")
            blank, replaced = [], []
            for i, record in enumerate(records):
                volume = readers.read_volume(record.path, allow_single_bscan=allow_single_bscan,
                                             check_finite=not replace_nonfinite)
                replaced.append(bool(zero_nonfinite(volume)) if replace_nonfinite else False)
                volume = preprocess(volume, shape, clip)
                blank.append(not volume.any())
                out[i] = np.rint(volume * 255.0) if dtype == "uint8" else volume
            out.flush()
            index = {"version": STORE_VERSION, "key": key, "dtype": dtype, "shape": list(out.shape[1:]),
                     "paths": [r.path for r in records], "labels": [names[r.label] for r in records],
                     "patients": [r.patient_id for r in records], "blank": blank, "replaced": replaced,
                     "crc32": _crc32(out)}
            del out
            (tmp / "index.json").write_text(json.dumps(index))
            os.replace(tmp, final)  # atomic: readers see no store or the whole store
    except OSError as err:  # not the host's
        raise DataError(f"{final}: cannot write the consolidated data set ({err.strerror}); "
                        "set data.cache_dir to a writable folder with room for it") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
