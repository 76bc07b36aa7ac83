"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

Each write goes to a temporary file beside the target (same folder, so the same file system and
an atomic rename), then :func:`os.replace` puts it in the target's place. When the write fails
before that (the data does not serialize, the disk is full, an exception or Ctrl-C), the
temporary file is removed and the target keeps its old content. Only a process killed outright
(SIGKILL, power loss) can leave a temporary file behind: it is hidden and named
``.<target name>.<pid>.<random>.tmp``. A write given ``what=`` (a run's outputs) that the host
fails (a full disk, a read-only file system, ...: :data:`~octtrain.errors.HOST_ERRNOS`) raises one
:class:`~octtrain.errors.HostError`, ``disk full (No space left on device) writing the last
checkpoint /runs/x/last.pt``, after the temporary file is gone.

No fsync: the files written this way (checkpoints, run records, a trial's queue and result) must
survive a crashed or killed process and be read whole by another one, which the rename gives;
they need not survive a crash of the machine, and an fsync of every epoch's checkpoint would
cost each epoch a wait for the disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from octtrain.errors import host_errors


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], what: str | None = None) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` for the caller to write (e.g. ``torch.save``);
    when the block ends, it replaces ``path``, or, if the block raised, it is removed.
    ``what`` (e.g. ``"the last checkpoint"``): a failure the host caused is a HostError that
    names it and ``path``; without it, exceptions pass unchanged."""
    target = Path(path)
    # pid and random: concurrent writers of one target (processes or threads) never share one
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    with host_errors(what, target) if what is not None else contextlib.nullcontext():
        try:
            yield tmp
            os.replace(tmp, target)
        except BaseException:
            # The file system that failed the write may fail this too (read-only, gone): the
            # write's exception is the one to report, not a second one raised while handling it.
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise


def write_atomic(path: str | os.PathLike[str], data: bytes | str, what: str | None = None) -> None:
    """Write ``data`` (``str``: as UTF-8) to ``path`` atomically (``what``: as :func:`atomic_path`)."""
    raw = data.encode() if isinstance(data, str) else data
    with atomic_path(path, what) as tmp:
        tmp.write_bytes(raw)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int | None = None,
                      allow_nan: bool = True) -> None:
    """Write ``obj`` as JSON (``json.dumps`` with these options) to ``path`` atomically. ``obj``
    is serialised first: one that cannot be (a TypeError, or a ValueError for NaN/inf with
    ``allow_nan=False``) raises before any file is touched."""
    write_atomic(path, json.dumps(obj, indent=indent, allow_nan=allow_nan))
