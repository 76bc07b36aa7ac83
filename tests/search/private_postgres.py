"""A private PostgreSQL server that a test starts, stops, restarts and removes itself.

Debian's ``initdb``/``pg_ctl`` (``/usr/lib/postgresql/*/bin``) create a cluster in a fresh
folder on a free port with trust authentication, listening on 127.0.0.1 only. PostgreSQL
refuses to run as root, so when the tests run as root the commands run as the ``postgres``
system user (``runuser``). The shared servers (5432, 3306) are never touched. Without
``initdb`` a test is skipped, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

SERVER_USERS = ("postgres", "nobody")  # the first that exists runs the server under root


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _server_user() -> str:
    for name in SERVER_USERS:
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    pytest.fail(f"no non-root user ({', '.join(SERVER_USERS)}) to run PostgreSQL as")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """One cluster: :meth:`start`, :meth:`stop` (fast shutdown, as a server restart does),
    :meth:`remove`; :attr:`url` for SQLAlchemy. ``settings``: server settings of every start
    (e.g. ``{"max_connections": "400"}``)."""

    def __init__(self, settings: Mapping[str, str] | None = None) -> None:
        self.settings = dict(settings or {})
        bin_dir = _bin_dir()
        if bin_dir is None:
            message = "no initdb/pg_ctl (Debian's postgresql package) for a private PostgreSQL"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(message)
            pytest.skip(message)
        self._bin = bin_dir
        self._user = _server_user() if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="octsearch-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self._bin / tool), *args]
        if self._user is not None:
            command = ["runuser", "-u", self._user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 "
                   f"-c unix_socket_directories={self.root} -c fsync=off"
                   + "".join(f" -c {name}={value}" for name, value in self.settings.items()))
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l",
                  str(self.root / "server.log"), "-w", "-t", "30", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def remove(self) -> None:
        if self.running():
            try:
                self.stop()
            except subprocess.SubprocessError:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def wait_for(condition: object, timeout: float, what: str) -> None:
    """Poll ``condition()`` every 0.1 s until true; fail the test naming ``what``."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
