"""octtrain.errors: how a problem is put into words, in both packages."""

from __future__ import annotations

import errno
import os
import pickle

import pytest

from octtrain.errors import (
    ConfigError,
    DataError,
    HostError,
    OcttrainError,
    clip,
    describe_exit,
    format_problems,
    host_errors,
    one_line,
)


def test_problems_on_one_line_with_their_file() -> None:
    assert format_problems([("a.b", "bad"), ("", "also")], "f.yaml") == "f.yaml: a.b: bad; also"
    err = ConfigError([("train.lr_head", "must be > 0, got -1.0")], "c.yaml")
    assert str(err) == "c.yaml: train.lr_head: must be > 0, got -1.0"
    assert one_line(RuntimeError("driver said\n  no\n")) == "driver said no"


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0, "exited with status 0"),
        (3, "exited with status 3"),
        (-9, "was killed by SIGKILL (out of memory?)"),
        (-15, "was killed by SIGTERM"),
        (-200, "was killed by signal 200"),
        (None, "failed"),
    ],
)
def test_describe_exit(code: int | None, text: str) -> None:
    assert describe_exit(code) == text


def test_clip() -> None:
    assert clip("short", 10) == "short"
    assert clip("x" * 20, 10) == "xxxxxxx..."
    assert len(clip("y" * 1000)) == 300


@pytest.mark.parametrize(("code", "said"), [
    (errno.ENOSPC, "disk full (No space left on device)"),
    (errno.EDQUOT, "disk quota exceeded"),
    (errno.EFBIG, "file too large"),
    (errno.EROFS, "read-only file system"),
    (errno.EACCES, "permission denied"),
    (errno.EPERM, "operation not permitted"),
    (errno.ENOENT, "directory missing (No such file or directory)"),
    (errno.EIO, "I/O error (Input/output error)"),
])
def test_a_write_the_host_fails_is_one_host_error_naming_what_and_where(code: int, said: str) -> None:
    with pytest.raises(HostError) as caught, host_errors("the last checkpoint", "/runs/x/last.pt"):
        raise OSError(code, os.strerror(code), "/runs/x/.last.pt.1.ab.tmp")
    assert str(caught.value) == f"{said} writing the last checkpoint /runs/x/last.pt"
    assert caught.value.path == "/runs/x/last.pt"
    assert isinstance(caught.value, OcttrainError)
    assert caught.value.__cause__ is not None  # --debug shows the OSError


def test_torch_saves_failed_write_counts_by_the_oserror_it_was_raised_while_handling() -> None:
    expected = r"^disk full \(No space left on device\) writing the best checkpoint best.pt$"
    with pytest.raises(HostError, match=expected), host_errors("the best checkpoint", "best.pt"):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:  # what torch's zip writer does in its __exit__
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos")  # noqa: B904


def test_an_oserror_not_of_the_host_passes_unchanged() -> None:
    with pytest.raises(NotADirectoryError), host_errors("the data set cache", "/c/consolidated"):
        raise OSError(errno.ENOTDIR, "Not a directory")


@pytest.mark.parametrize("raised", [
    ValueError("not serialisable"),
    DataError("v.npy: volume not found"),  # the package's own, whatever OSError it replaced
])
def test_an_error_raised_while_handling_the_hosts_passes_unchanged(raised: Exception) -> None:
    with pytest.raises(type(raised)) as caught, host_errors("the metrics", "metrics.jsonl"):
        try:
            raise OSError(errno.ENOENT, "No such file or directory")
        except OSError:
            raise raised  # noqa: B904 - the context is what host_errors must not look through
    assert caught.value is raised


def test_a_context_raised_from_none_is_not_looked_through() -> None:
    with pytest.raises(RuntimeError, match="unrelated"), host_errors("the metrics", "metrics.jsonl"):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("unrelated") from None


def test_a_host_error_keeps_its_path_through_pickle() -> None:
    err = HostError("disk full writing the metrics /r/metrics.jsonl", path="/r/metrics.jsonl")
    assert (str(err), err.path) == ("disk full writing the metrics /r/metrics.jsonl", "/r/metrics.jsonl")
    assert HostError("x").path is None
    assert isinstance(pickle.loads(pickle.dumps(err)), HostError)
