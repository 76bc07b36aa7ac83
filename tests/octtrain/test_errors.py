"""octtrain.errors: how a problem is put into words, in both packages."""

from __future__ import annotations

import pytest

from octtrain.errors import ConfigError, clip, describe_exit, format_problems, one_line


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
