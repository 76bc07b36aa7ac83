"""Errors a user can cause, errors the host causes, and how both CLIs put a problem into words.

The CLIs print an error as one line and exit non-zero. Validators collect :data:`Problems`
(dotted key path, message) and raise them all at once in a :class:`ProblemsError`. A write that
the host fails (a full disk, a read-only file system, ...) is a :class:`HostError`
(:func:`host_errors`): the same config may well succeed on another host or later.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import signal
from collections.abc import Iterator, Sequence
from types import ModuleType

Problems = list[tuple[str, str]]  # (dotted key path in the file, message); "" for the file


def format_problems(problems: Sequence[tuple[str, str]], source: str | None = None) -> str:
    """``"file.yaml: a.b: msg; c: msg"``: problems keyed by dotted path, on one line."""
    where = f"{source}: " if source else ""
    return where + "; ".join(f"{key}: {msg}" if key else msg for key, msg in problems)


def one_line(err: BaseException) -> str:
    """An error's message on one line: what a CLI prints (drivers' messages contain newlines)."""
    return " ".join(str(err).split())


def clip(text: str, limit: int = 300) -> str:
    """``text`` cut to at most ``limit`` characters, ending in ``...`` when it was cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_exit(code: int | None) -> str:
    """How a child process ended, for a message that starts with its name:
    ``exited with status 3``, ``was killed by SIGKILL (out of memory?)``; ``failed`` when
    there is no exit status (None)."""
    if code is None:
        return "failed"
    if code >= 0:
        return f"exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        return f"was killed by signal {-code}"
    return f"was killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")


class OcttrainError(Exception):
    """Base class of every error the trainer raises on purpose."""


class ProblemsError(Exception):
    """Problems of one file, each named by its dotted key path, reported all at once so a user
    fixes a file in one round trip rather than one error at a time."""

    def __init__(self, problems: Sequence[tuple[str, str]], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(format_problems(self.problems, source))


class ConfigError(ProblemsError, OcttrainError):
    """Problems in a trainer config (``train.lr_head: must be > 0, got -1.0``)."""


class DataError(OcttrainError):
    """A dataset, manifest or volume file is missing, corrupt or inconsistent."""


def optional_import(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` of an optional extra, or a DataError naming the extra to install:
    ``a.vol: reading .vol files needs eyepy (No module named 'eyepy'): pip install
    'octsearch[formats]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise DataError(f"{purpose} needs {module.partition('.')[0]} ({one_line(err)}): "
                        f"pip install 'octsearch[{extra}]'") from None


class RunExistsError(OcttrainError):
    """The run directory given for a new run already holds one."""


class DivergedError(OcttrainError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, loss: float) -> None:
        self.epoch = epoch
        self.loss = loss
        super().__init__(f"training diverged: loss is {loss} in epoch {epoch}")


class HostError(OcttrainError):
    """The host failed the run, not the configuration: a full disk or quota, a read-only file
    system, permission denied on an output path, a directory that vanished, an I/O error. The
    same config may succeed on another host or later (a search re-queues it rather than failing
    it). ``path``: the file or directory being written."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = path
        super().__init__(message)


# errno of an OSError that the host causes, not the configuration → how a message names it
HOST_ERRNOS: dict[int, str] = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOENT: "directory missing",
    errno.EIO: "I/O error",
}


def _host_cause(err: BaseException) -> OSError | None:
    """The host's OSError (errno in :data:`HOST_ERRNOS`) that ``err`` is, or that an OSError or
    RuntimeError ``err`` was raised from or while handling: ``torch.save`` reports a failed write
    as a RuntimeError raised while the write's OSError was handled, and a file's close fails
    again while the failed write is handled. Any other exception (a ValueError, the package's
    own DataError for a missing volume) is not the host's, whatever OSError it replaced."""
    seen: set[int] = set()
    current: BaseException | None = err
    while isinstance(current, (OSError, RuntimeError)) and id(current) not in seen:
        if isinstance(current, OSError) and current.errno in HOST_ERRNOS:
            return current
        seen.add(id(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return None


def _host_message(err: OSError, what: str, path: str | os.PathLike[str]) -> str:
    """``disk full (No space left on device) writing the last checkpoint /runs/x/last.pt``."""
    cause = HOST_ERRNOS.get(err.errno or 0, "cannot write")
    detail = err.strerror or ""
    said = cause if detail.lower() in ("", cause.lower()) else f"{cause} ({detail})"
    return f"{said} writing {what} {os.fspath(path)}"


@contextlib.contextmanager
def host_errors(what: str, path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn an exception of the block that the host caused (:func:`_host_cause`) into one
    :class:`HostError` naming ``what`` was written and ``path``; others pass unchanged."""
    try:
        yield
    except Exception as err:
        cause = _host_cause(err)
        if cause is None:
            raise
        raise HostError(_host_message(cause, what, path), path=path) from err
