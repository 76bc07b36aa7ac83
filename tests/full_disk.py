"""A real full file system for the tests of writes the host fails (``conftest.full_disk``).

A folder on a tmpfs of ``room`` bytes, mounted by the test where it can: as root in this
process's mount namespace, else in a user namespace of its own (``unshare --user
--map-root-user --mount``: the command runs inside it, and the folder's files are copied out
when it ends). Where neither can mount, a file-size limit stands in for it: the command runs
with ``RLIMIT_FSIZE`` at ``room`` and SIGXFSZ ignored, so a write past ``room`` bytes of one file
fails with EFBIG. ``OCTTRAIN_TEST_FULL_DISK=mount|unshare|rlimit`` picks one (to test each).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

KINDS = ("mount", "unshare", "rlimit")
REPO = Path(__file__).resolve().parents[1]

# The command of a user namespace: mount the tmpfs, run the command, copy the files out.
_UNSHARE_SH = ('size=$1 disk=$2 kept=$3; shift 3; mount -t tmpfs -o "size=$size" tmpfs "$disk" '
               '|| exit 125; "$@"; rc=$?; cp -a "$disk"/. "$kept"/; exit $rc')
# The command under a file-size limit: SIGXFSZ ignored (it would kill the process), then exec.
_RLIMIT_PY = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "n = int(sys.argv[1]); resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
              "os.execvp(sys.argv[2], sys.argv[2:])")


@dataclass(frozen=True)
class FullDisk:
    """``path``: the folder the command writes to, ``room`` bytes free (``kind``: see the module
    docstring); :meth:`run` runs a command with it; ``kept``: where its files are afterwards;
    ``cause``: how a HostError names what failed the write."""

    kind: str
    path: Path
    kept: Path
    room: int

    @property
    def cause(self) -> str:
        return "file too large" if self.kind == "rlimit" else "disk full (No space left on device)"

    def run(self, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        """``subprocess.run(argv)`` (text output captured) with ``path`` full past ``room``."""
        if self.kind == "unshare":
            argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", _UNSHARE_SH, "sh",
                    str(self.room), str(self.path), str(self.kept), *argv]
        elif self.kind == "rlimit":
            argv = [sys.executable, "-c", _RLIMIT_PY, str(self.room), *argv]
        # this checkout's octtrain, wherever the command runs (env: the given one, else ours)
        base = dict(kwargs.pop("env", None) or os.environ)  # type: ignore[call-overload]
        env = {**base, "PYTHONPATH": os.pathsep.join([str(REPO), base.get("PYTHONPATH", "")])}
        cwd = kwargs.pop("cwd", REPO)
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                              cwd=cwd, env=env, **kwargs)  # type: ignore[call-overload]


def _succeeds(argv: Sequence[str]) -> bool:
    try:
        return subprocess.run(argv, capture_output=True, timeout=60).returncode == 0
    except OSError:  # no such program
        return False


@functools.cache
def available_kind() -> str | None:
    """The best kind this host allows (mount, unshare, rlimit), or None."""
    forced = os.environ.get("OCTTRAIN_TEST_FULL_DISK")
    if forced:
        assert forced in KINDS, f"OCTTRAIN_TEST_FULL_DISK must be one of {KINDS}, got {forced!r}"
        return forced
    with tempfile.TemporaryDirectory() as probe:
        if os.geteuid() == 0 and _succeeds(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", probe]):
            subprocess.run(["umount", probe], check=True)
            return "mount"
        if shutil.which("unshare") and _succeeds(["unshare", "--user", "--map-root-user", "--mount",
                                                  "mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", probe]):
            return "unshare"
        big = Path(probe) / "big"
        if _succeeds([sys.executable, "-c", _RLIMIT_PY, "4096", sys.executable, "-c",
                      f"import errno\ntry: open({str(big)!r}, 'wb').write(bytes(8192))\n"
                      "except OSError as e: raise SystemExit(0 if e.errno == errno.EFBIG else 1)\n"
                      "raise SystemExit(1)"]):
            return "rlimit"
    return None


def make_full_disk(kind: str, root: Path, room: int) -> FullDisk:
    """A FullDisk of ``room`` bytes in the (new) folder ``root/disk``; as root (``mount``), the
    tmpfs is mounted here: :func:`release` it."""
    path, kept = root / "disk", root / "disk-kept"
    path.mkdir(parents=True)
    if kind == "mount":
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(path)], check=True)
        return FullDisk(kind, path, path, room)
    if kind == "unshare":
        kept.mkdir()
        return FullDisk(kind, path, kept, room)
    return FullDisk(kind, path, path, room)


def release(disk: FullDisk) -> None:
    if disk.kind == "mount":
        subprocess.run(["umount", str(disk.path)], check=True)
