"""Errors a user can cause, and how both CLIs put a problem into words.

The CLIs print an error as one line and exit non-zero. Validators collect :data:`Problems`
(dotted key path, message) and raise them all at once in a :class:`ProblemsError`.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence

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


class RunExistsError(OcttrainError):
    """The run directory given for a new run already holds one."""


class DivergedError(OcttrainError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, loss: float) -> None:
        self.epoch = epoch
        self.loss = loss
        super().__init__(f"training diverged: loss is {loss} in epoch {epoch}")
