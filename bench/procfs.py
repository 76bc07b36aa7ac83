"""What the pod load test (bench/pod_load.py) reads about the processes it runs, from /proc and
PostgreSQL's pg_stat_activity: trial processes, children, the TCP connections each holds to the
database, memory (PSS) and CPU time."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy


def trial_pids(runs_dirs: list[Path]) -> list[int]:
    """Pids of the live trial processes (``python -m search.trial REQUEST``) under ``runs_dirs``
    (a zombie, dead and not yet reaped, is not one)."""
    roots = [str(d).encode() for d in runs_dirs]
    pids = []
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = entry.read_bytes().split(b"\0")
            state = (entry.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"search.trial" in args and any(a.startswith(root) for a in args for root in roots):
            pids.append(int(entry.parent.name))
    return pids


def tagged(url: str, tag: str) -> str:
    """``url`` whose connections show ``tag`` as their application_name in pg_stat_activity."""
    parsed = sqlalchemy.engine.make_url(url)
    return parsed.update_query_dict({"application_name": tag}).render_as_string(hide_password=False)


def children(parents: set[int]) -> dict[int, int]:
    """Every process whose parent is in ``parents``: pid -> parent pid."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) in parents:
            found[int(stat.parent.name)] = int(fields[1])
    return found


def socket_inodes(pid: int) -> list[int]:
    inodes = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with_link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if with_link.startswith("socket:["):
                inodes.append(int(with_link[8:-1]))
    except OSError:  # the process ended meanwhile
        pass
    return inodes


def local_ports_to(server_port: int) -> dict[int, int]:
    """Local port -> socket inode of this host's TCP connections to ``server_port``."""
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cells = line.split()
            if int(cells[2].rsplit(":", 1)[1], 16) == server_port:
                ports[int(cells[1].rsplit(":", 1)[1], 16)] = int(cells[9])
    return ports


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    t: float  # monotonic time
    connections: int  # the run's in pg_stat_activity
    by_role: Counter[str]  # of those: proxy, worker, trial, or other (ended meanwhile)
    trials: int  # trial processes alive
    pss_kib: int | None  # of every process of the run; None: not sampled this time


class Sampler:
    """One monitoring connection (its own application_name) and the run's processes."""

    def __init__(self, db_url: str, tag: str, processes: Any, pss_every: int) -> None:
        url = sqlalchemy.engine.make_url(db_url)
        self._conn = psycopg.connect(
            host=url.host, port=url.port or 5432, user=url.username, password=url.password,
            dbname=url.database, application_name="podload-monitor", autocommit=True)
        self._tag = tag
        self._port = url.port or 5432
        self._processes = processes  # .alive(): the run's processes, each with .proc and .role
        self._pss_every = pss_every  # sample memory every this many samples (smaps costs CPU)
        self.samples: list[Sample] = []

    def close(self) -> None:
        self._conn.close()

    def sample(self) -> Sample:
        roles = {s.proc.pid: s.role for s in self._processes.alive()}
        workers = {pid for pid, role in roles.items() if role == "worker"}
        trials = children(workers)
        roles.update((pid, "trial") for pid in trials)
        rows = self._conn.execute("SELECT client_port FROM pg_stat_activity WHERE application_name = %s",
                                  (self._tag,)).fetchall()
        ports = local_ports_to(self._port)
        owner = {inode: role for pid, role in roles.items() for inode in socket_inodes(pid)}
        by_role = Counter(owner.get(ports.get(port, -1), "other") for (port,) in rows)
        pss = sum(pss_kib(pid) for pid in roles) if len(self.samples) % self._pss_every == 0 else None
        self.samples.append(Sample(time.monotonic(), len(rows), by_role, len(trials), pss))
        return self.samples[-1]
