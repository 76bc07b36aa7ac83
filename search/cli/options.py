"""What every ``octsearch`` command resolves the same way: ``--storage`` (else ``$OCTSEARCH_STORAGE``,
else the working folder's SQLite file), ``--study`` (else the space file's name), ``--debug``, the
devices ``--device`` names, and a study opened for review.
"""

from __future__ import annotations

import argparse
import os

import optuna

from search.storage import DEFAULT_STORAGE, open_storage

DEVICES = ("auto", "xla", "cuda", "cpu")

STORAGE_ENV = "OCTSEARCH_STORAGE"  # the default --storage: keeps a password off the command line


def add_common(parser: argparse.ArgumentParser, *, study: bool = True) -> None:
    # The default is read when the command runs, never shown: it may hold a password.
    parser.add_argument("--storage", metavar="URL",
                        help=f"sqlite:///FILE, postgresql+psycopg://..., mysql+pymysql://... or "
                             f"grpc://HOST:PORT (octsearch serve-storage) "
                             f"(default: ${STORAGE_ENV}, else {DEFAULT_STORAGE})")
    if study:
        parser.add_argument("--study", metavar="NAME",
                            help="study name (default: the space file's name; for review "
                                 "commands, the storage's only study)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def storage_url(args: argparse.Namespace) -> str:
    """``--storage``, else ``$OCTSEARCH_STORAGE``, else the SQLite file of the working folder."""
    return str(args.storage or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE)


def study_name(args: argparse.Namespace) -> str | None:
    if args.study:
        return str(args.study)
    space = getattr(args, "space", None)
    return space.stem if space is not None else None


def review_study(args: argparse.Namespace) -> optuna.Study:
    from search.study import load_review_study

    storage = open_storage(storage_url(args), heartbeat=False, create=False)
    return load_review_study(storage, study_name(args))
