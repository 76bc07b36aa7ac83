"""Storage URLs: a database's (``sqlite:///FILE``, ``postgresql+psycopg://...``,
``mysql+pymysql://...``) with the driver this project installs, a gRPC proxy's
(``grpc://HOST:PORT``), and any of them with its password hidden for messages.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import sqlalchemy

from search.errors import StorageError

SCHEME = "grpc://"
DEFAULT_PORT = 13000  # Optuna's default port of the proxy
_DRIVERS = {
    "sqlite": "sqlite",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "mysql": "mysql+pymysql",
    "mysql+pymysql": "mysql+pymysql",
}


def is_grpc_url(url: str) -> bool:
    return url.strip().lower().startswith(SCHEME)


def parse_grpc_url(url: str) -> tuple[str, int]:
    """(host, port) of ``grpc://HOST[:PORT]`` (port :data:`DEFAULT_PORT` if not given), or a
    StorageError quoting the URL."""
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError as err:
        raise StorageError(f"cannot parse storage URL {url!r}: {err}; use grpc://HOST:PORT") from None
    if not host or parts.path not in ("", "/") or parts.query or parts.username:
        raise StorageError(f"cannot parse storage URL {url!r}: use grpc://HOST:PORT, the address "
                           "`octsearch serve-storage` prints")
    return host, port if port is not None else DEFAULT_PORT


def grpc_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"{SCHEME}{shown}:{port}"


def normalize_url(url: str) -> str:
    """``url`` with the driver this project installs, or a StorageError naming it; a proxy's
    ``grpc://HOST[:PORT]`` with its port."""
    if is_grpc_url(url):
        return grpc_url(*parse_grpc_url(url))
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(
            f"cannot parse storage URL {redact(url)!r}: use sqlite:///FILE, "
            "postgresql+psycopg://USER@HOST/DB or mysql+pymysql://USER@HOST/DB"
        ) from None
    driver = _DRIVERS.get(parsed.drivername)
    if driver is None:
        raise StorageError(
            f"unsupported storage {parsed.drivername!r} in {redact(url)!r}: use sqlite:///FILE, "
            "postgresql+psycopg://USER@HOST/DB or mysql+pymysql://USER@HOST/DB"
        )
    return parsed.set(drivername=driver).render_as_string(hide_password=False)


def check_shared(url: str) -> str:
    """``url`` normalized, or a StorageError for an in-memory SQLite database (``sqlite://``,
    ``sqlite:///``, ``:memory:``): each trial process opens the storage again and would find
    an empty database of its own."""
    normalized = normalize_url(url)
    if normalized.startswith("grpc://"):
        return normalized  # the proxy's database is shared by construction
    parsed = sqlalchemy.engine.make_url(normalized)
    in_memory = (not parsed.database or parsed.database == ":memory:"
                 or parsed.query.get("mode") == "memory")
    if parsed.get_backend_name() == "sqlite" and in_memory:
        raise StorageError(f"{redact(url)!r} is an in-memory SQLite database, which trial "
                           "processes cannot see: use sqlite:///FILE")
    return normalized


def redact(url: str) -> str:
    """The URL with its password hidden, for messages (also when it cannot be parsed)."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)
    return url if parsed.password is None else parsed.render_as_string(hide_password=True)
