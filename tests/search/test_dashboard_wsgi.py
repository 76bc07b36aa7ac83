"""search/review/dashboard_wsgi.py: what ``octsearch dashboard`` puts in front of optuna-dashboard."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from search.review.dashboard_wsgi import WRAP_STYLE, read_only, wrap_long_values

PAGE = b"<html><head><title>x</title></head><body></body></html>"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A stand-in for optuna-dashboard: its HTML page under /dashboard, JSON elsewhere."""
    html = environ["PATH_INFO"].startswith("/dashboard")
    body = PAGE if html else b'{"ok": true}'
    start_response("200 OK", [("Content-Type", "text/html" if html else "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


def call(wsgi: Any, method: str, path: str) -> tuple[str, dict[str, str], bytes]:
    seen: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        seen.update(status=status, headers=dict(headers))

    body = b"".join(wsgi({"REQUEST_METHOD": method, "PATH_INFO": path}, start_response))
    return seen["status"], seen["headers"], body


@pytest.mark.parametrize(("method", "path"), [
    ("DELETE", "/api/studies/1"), ("POST", "/api/studies"), ("PUT", "/api/studies/1/2/note"),
    ("POST", "/api/artifacts/1/2"), ("POST", "/api/trials/3/user-attrs"), ("PATCH", "/api/x")])
def test_read_only_refuses_every_write_with_403_and_a_reason(method: str, path: str) -> None:
    status, headers, body = call(read_only(app), method, path)
    assert status == "403 Forbidden" and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"reason": f"read-only dashboard (octsearch dashboard --read-only): "
                                          f"{method} {path} refused; nothing in the study was changed"}
    assert headers["Content-Length"] == str(len(body))


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_read_only_serves_reads(method: str) -> None:
    assert call(read_only(app), method, "/api/studies") == call(app, method, "/api/studies")


def test_the_dashboard_page_wraps_long_values_and_nothing_else_changes() -> None:
    status, headers, body = call(wrap_long_values(app), "GET", "/dashboard/studies/1")
    assert status == "200 OK" and body == PAGE.replace(b"</head>", WRAP_STYLE + b"</head>")
    assert headers["Content-Length"] == str(len(body))
    assert call(wrap_long_values(app), "GET", "/api/studies") == call(app, "GET", "/api/studies")
