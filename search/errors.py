"""Errors a user can cause. ``octsearch`` prints them as one line and exits non-zero."""

from __future__ import annotations

from collections.abc import Sequence

from octtrain.errors import format_problems


class OctsearchError(Exception):
    """Base class of every error the search service raises on purpose."""


class SearchSpaceError(OctsearchError):
    """One or more problems in a search space, each named by its key path.

    Like :class:`octtrain.ConfigError`, all problems of a file are collected and reported at
    once. ``key`` is a dotted path into the space file, e.g. ``params.train.lr_head``.
    """

    def __init__(self, problems: Sequence[tuple[str, str]], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(format_problems(self.problems, source))


class StorageError(OctsearchError):
    """The study storage cannot be opened, or the study is missing or not usable."""


class WorkerError(OctsearchError):
    """A worker stopped because its trials keep failing."""
