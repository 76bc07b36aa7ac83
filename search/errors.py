"""Errors a user can cause. ``octsearch`` prints them as one line and exits non-zero."""

from __future__ import annotations

from octtrain.errors import ProblemsError


class OctsearchError(Exception):
    """Base class of every error the search service raises on purpose."""


class SearchSpaceError(ProblemsError, OctsearchError):
    """Problems in a search space, each named by its key path, e.g. ``params.train.lr_head``;
    all problems of a file are collected and reported at once, as for a trainer config."""


class StorageError(OctsearchError):
    """The study storage cannot be opened, or the study is missing or not usable."""


class WorkerError(OctsearchError):
    """A worker stopped because its trials keep failing."""


class PreflightError(OctsearchError):
    """What every trial needs is missing (data, device): refused before the first trial."""
