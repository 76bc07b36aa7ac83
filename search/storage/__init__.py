"""Where a study is stored: SQL storage opened with WAL, pools, heartbeats and stale-trial retry
(``sql``), storage URLs (``urls``), the continuation of a stopped trial (``continuation``), riding
out a database outage (``retry``), and Optuna's gRPC storage proxy: the ``grpc://`` client
(``grpc_client``) and ``octsearch serve-storage`` (``grpc_server``).
"""

from __future__ import annotations

from search.storage.continuation import queue_continuation, retire_checkpoint
from search.storage.grpc_client import open_grpc_storage
from search.storage.grpc_server import serve
from search.storage.retry import (
    DEFAULT_OUTAGE_S,
    OUTAGE_ENV,
    DatabaseUnreachableError,
    Outage,
    RetryingStorage,
    is_outage,
    outage_limit_from_env,
    single_attempt,
)
from search.storage.sql import DEFAULT_STORAGE, StudyStorage, asking, fail_stale, heartbeat, open_storage
from search.storage.urls import check_shared, is_grpc_url, redact

__all__ = [
    "DEFAULT_OUTAGE_S",
    "DEFAULT_STORAGE",
    "DatabaseUnreachableError",
    "OUTAGE_ENV",
    "Outage",
    "RetryingStorage",
    "StudyStorage",
    "asking",
    "check_shared",
    "fail_stale",
    "heartbeat",
    "is_grpc_url",
    "is_outage",
    "open_grpc_storage",
    "open_storage",
    "outage_limit_from_env",
    "queue_continuation",
    "retire_checkpoint",
    "redact",
    "serve",
    "single_attempt",
]
