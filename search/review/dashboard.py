"""``octsearch dashboard``: optuna-dashboard on the study storage, for review in a browser;
read-only with ``--read-only`` (:mod:`search.review.dashboard_wsgi`)."""

from __future__ import annotations

import sys
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import TextIO
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from search.errors import OctsearchError
from search.review.artifacts import artifact_store
from search.review.dashboard_wsgi import read_only as refuse_writes
from search.review.dashboard_wsgi import wrap_long_values
from search.storage import open_storage, redact


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a browser's open connections must not keep Ctrl-C from exiting


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - base signature
        pass  # one line per HTTP request (the UI polls) would drown the terminal


def make_dashboard_server(storage_url: str, host: str, port: int,
                          artifacts_dir: Path | None = None, read_only: bool = False) -> WSGIServer:
    """A WSGI server with optuna-dashboard's app on ``storage_url``; ``port=0``: any free port.
    ``artifacts_dir``: the trials' artifact store, served where it exists. ``read_only``: every
    request that could write is refused."""
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise OctsearchError("optuna-dashboard is not installed: pip install "
                             "'octsearch[dashboard]'") from None
    store = artifact_store(artifacts_dir, create=False) if artifacts_dir and artifacts_dir.is_dir() \
        else None
    app = wrap_long_values(wsgi(open_storage(storage_url, heartbeat=False, create=False),
                                artifact_store=store))
    if read_only:
        app = refuse_writes(app)
    try:
        return make_server(host, port, app, server_class=_ThreadingWSGIServer,
                           handler_class=_QuietHandler)
    except OSError as err:
        raise OctsearchError(f"cannot listen on {host}:{port}: {err.strerror}") from None


def serve(storage_url: str, host: str, port: int, *, artifacts_dir: Path | None = None,
          read_only: bool = False, out: TextIO | None = None) -> None:
    """Serve the dashboard until interrupted."""
    out = out if out is not None else sys.stderr  # the current one (tests capture it)
    server = make_dashboard_server(storage_url, host, port, artifacts_dir, read_only)
    bound_port = server.server_address[1]
    out.write(f"octsearch: optuna-dashboard for {redact(storage_url)} on "
              f"http://{host}:{bound_port}/{' (read-only)' if read_only else ''} (Ctrl-C to stop)\n")
    if artifacts_dir is not None and not artifacts_dir.is_dir():
        out.write(f"octsearch: no artifact store at {artifacts_dir}: trial artifacts will not open "
                  "(--artifacts-dir)\n")
    out.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()
