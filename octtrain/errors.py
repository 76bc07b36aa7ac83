"""Errors a user can cause. The CLIs print them as one line and exit non-zero."""

from __future__ import annotations

from collections.abc import Sequence


def format_problems(problems: Sequence[tuple[str, str]], source: str | None = None) -> str:
    """``"file.yaml: a.b: msg; c: msg"``: problems keyed by dotted path, on one line."""
    where = f"{source}: " if source else ""
    return where + "; ".join(f"{key}: {msg}" if key else msg for key, msg in problems)


def one_line(err: BaseException) -> str:
    """An error's message on one line: what a CLI prints (drivers' messages contain newlines)."""
    return " ".join(str(err).split())


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


class DivergedError(OcttrainError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, loss: float) -> None:
        self.epoch = epoch
        self.loss = loss
        super().__init__(f"training diverged: loss is {loss} in epoch {epoch}")
