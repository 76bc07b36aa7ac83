"""Atomic writes: the target holds the old content or the whole new one, and a failed write
leaves no temporary file behind; a write the host fails, given ``what``, is one HostError."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest
import torch
from full_disk import FullDisk

from octtrain.errors import HostError
from octtrain.files import atomic_path, write_atomic, write_json_atomic


def _disk_full(*args: Any, **kwargs: Any) -> NoReturn:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_write_atomic_writes_text_and_bytes_and_replaces_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    write_atomic(target, "première\n")
    assert target.read_bytes() == "première\n".encode()
    write_atomic(target, b"\x00\xffsecond")
    assert target.read_bytes() == b"\x00\xffsecond"
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_write_json_atomic_writes_what_json_dumps_gives(tmp_path: Path) -> None:
    target = tmp_path / "result.json"
    record = {"state": "complete", "value": 0.75, "epochs": [0, 1]}
    write_json_atomic(target, record, indent=1)
    assert target.read_text() == json.dumps(record, indent=1)
    assert json.loads(target.read_text()) == record


def test_the_file_gets_the_usual_permissions(tmp_path: Path) -> None:
    write_atomic(tmp_path / "atomic.txt", "x")
    (tmp_path / "plain.txt").write_text("x")
    assert (tmp_path / "atomic.txt").stat().st_mode == (tmp_path / "plain.txt").stat().st_mode


@pytest.mark.parametrize(("obj", "allow_nan", "error"), [
    ({"callback": print}, True, TypeError),  # not serialisable
    ({"value": math.nan}, False, ValueError),  # NaN refused
])
def test_an_object_json_cannot_write_leaves_the_old_file_and_no_tmp(
    tmp_path: Path, obj: Any, allow_nan: bool, error: type[Exception],
) -> None:
    target = tmp_path / "result.json"
    write_json_atomic(target, {"value": 1})
    with pytest.raises(error):
        write_json_atomic(target, obj, allow_nan=allow_nan)
    assert json.loads(target.read_text()) == {"value": 1}
    assert os.listdir(tmp_path) == ["result.json"]


def test_a_disk_full_while_writing_leaves_the_old_file_and_no_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tmp_path / "result.json"
    write_json_atomic(target, {"value": 1})

    def half_then_full(self: Path, data: bytes) -> int:
        with open(self, "wb") as handle:  # the temporary file exists, half written
            handle.write(data[: len(data) // 2])
        _disk_full()

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(target, {"value": 2})
    assert json.loads(target.read_text()) == {"value": 1}
    assert os.listdir(tmp_path) == ["result.json"]


def test_a_failed_rename_leaves_the_old_file_and_no_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    target = tmp_path / "notes.txt"
    write_atomic(target, "old")
    monkeypatch.setattr(os, "replace", _disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["notes.txt"]


def test_atomic_path_is_a_hidden_sibling_unique_per_write(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second
        for tmp in (first, second):
            assert tmp.parent == tmp_path
            assert tmp.name.startswith(".last.pt.") and tmp.name.endswith(".tmp")
        torch.save({"epoch": 1}, first)
        torch.save({"epoch": 2}, second)
        assert not target.exists()  # nothing in place until the block ends
    assert torch.load(target) == {"epoch": 1}  # the outer block ended last
    assert os.listdir(tmp_path) == ["last.pt"]


def test_an_exception_in_the_block_removes_the_tmp_and_keeps_the_target(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    torch.save({"epoch": 0}, target)
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        torch.save({"epoch": 1}, tmp)
        raise KeyboardInterrupt
    assert torch.load(target) == {"epoch": 0}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_an_exception_before_anything_was_written_is_passed_on(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="no state"), atomic_path(tmp_path / "x.pt"):
        raise RuntimeError("no state")
    assert os.listdir(tmp_path) == []


WRITE_ON_FULL_DISK = """
import json, sys
from octtrain.errors import HostError
from octtrain.files import write_atomic
path, size = sys.argv[1], int(sys.argv[2])
write_atomic(path, "old", "the run's config")
try:
    write_atomic(path, "x" * size, "the run's config")
except HostError as err:
    print(json.dumps({"message": str(err), "path": str(err.path)}))
"""


def test_a_write_a_full_disk_fails_is_one_host_error_and_leaves_the_old_file_and_no_tmp(
    full_disk: Callable[[int], FullDisk],
) -> None:
    disk = full_disk(8192)
    target = disk.path / "config.yaml"
    proc = disk.run([sys.executable, "-c", WRITE_ON_FULL_DISK, str(target), str(64 * 1024)])
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {
        "message": f"{disk.cause} writing the run's config {target}", "path": str(target)}
    assert os.listdir(disk.kept) == ["config.yaml"]
    assert (disk.kept / "config.yaml").read_text() == "old"


def test_a_file_system_that_fails_the_cleanup_too_still_gives_the_writes_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Remounted read-only (or an I/O error) mid-write: removing the temporary file fails as well.
    def read_only(*args: Any, **kwargs: Any) -> NoReturn:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(Path, "write_bytes", read_only)
    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(HostError) as caught:
        write_atomic(tmp_path / "class_to_idx.json", "{}", "the class index")
    assert str(caught.value) == f"read-only file system writing the class index {tmp_path / 'class_to_idx.json'}"
    assert caught.value.__cause__ is not None and caught.value.__cause__.__context__ is None
