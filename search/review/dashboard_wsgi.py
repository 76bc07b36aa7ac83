"""What ``octsearch dashboard`` puts in front of optuna-dashboard's WSGI app.

- :func:`read_only` (``--read-only``): every request that could write (any method but GET, HEAD
  and OPTIONS: deleting or creating a study, renaming it, editing a note, uploading or deleting
  an artifact, telling a trial, setting a user attribute) is refused with 403 and a JSON body
  whose ``reason`` optuna-dashboard shows, before it reaches the storage. optuna-dashboard has
  no read-only mode of its own.
- :func:`wrap_long_values`: optuna-dashboard draws a trial's user attributes on one line each
  (``white-space: nowrap``), so one long value (a prune reason, a run directory) makes the whole
  trial page wider than the window. Its HTML page gets a style that wraps them instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
WRAP_STYLE = (b"<style>/* octsearch: long values wrap */ main p.MuiTypography-body1 "
              b"{ white-space: normal; overflow-wrap: anywhere; }</style>")


def refusal(method: str, path: str) -> str:
    """Why a request is refused: one line."""
    return (f"read-only dashboard (octsearch dashboard --read-only): {method} {path} refused; "
            "nothing in the study was changed")


def read_only(app: WSGIApp) -> WSGIApp:
    """``app`` that refuses every request but GET, HEAD and OPTIONS with 403 and a JSON reason."""
    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method in SAFE_METHODS:
            return app(environ, start_response)
        body = json.dumps({"reason": refusal(method, str(environ.get("PATH_INFO", "")))}).encode()
        start_response("403 Forbidden", [("Content-Type", "application/json"),
                                         ("Content-Length", str(len(body)))])
        return [body]

    return guarded


def wrap_long_values(app: WSGIApp) -> WSGIApp:
    """``app`` whose HTML pages (``/dashboard...``) carry :data:`WRAP_STYLE` in their head."""
    def styled(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not str(environ.get("PATH_INFO", "")).startswith("/dashboard"):
            return app(environ, start_response)
        answer: dict[str, Any] = {}

        def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
            answer.update(status=status, headers=headers, exc_info=exc_info)
            return lambda data: None  # optuna-dashboard (bottle) returns its body, never writes it

        chunks = app(environ, keep)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if callable(close):
                close()
        headers = answer["headers"]
        html = any(k.lower() == "content-type" and v.startswith("text/html") for k, v in headers)
        if answer["status"].startswith("200") and html and b"</head>" in body:
            body = body.replace(b"</head>", WRAP_STYLE + b"</head>", 1)
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        start_response(answer["status"], headers, answer["exc_info"])
        return [body]

    return styled
