"""A pod-sized load test: 128 trials at once in one study, through the gRPC proxy and directly.

    PYTHONPATH=$PWD .venv/bin/python bench/pod_load.py --private-server 500   # both modes, 15 min each
    PYTHONPATH=$PWD .venv/bin/python bench/pod_load.py --modes proxy           # on the shared test server

A pod of 32 hosts with 4 chips each runs one ``octsearch run --parallel 4`` worker per host,
128 trials at once. Here ``--hosts`` workers start together (``--start-gap-s`` apart), each the
real CLI (:func:`search.cli.main`) on a host of ``--chips`` simulated chips: this machine has
no accelerator, and a CPU worker gets at most one trial per core, so :func:`host_devices`
answers ``--chips`` TPU chips and each slot's trial process gets that chip's variables (which
the stand-in trainer ignores: it sleeps). The trials run ``tests/search/fake_fit.py``
(``FAKE_FIT_EPOCH_S`` = ``--epoch-s`` seconds per epoch, ``--epochs`` epochs; a trial whose
random ``hidden`` is 0 collapses and is pruned at epoch 2), each in its own trial process
(``python -m search.trial``) reporting every epoch through ``EpochReporter``, which the stand-in
trainer times (``FAKE_FIT_REPORT_TIMES=1``). The study asks for ``--trials`` finished trials.

Modes (``--modes``): ``proxy``: one ``octsearch serve-storage`` in front of the database and
every worker and trial process on ``grpc://``; ``direct``: every worker and trial process on
the database itself. The database is ``--storage`` (the shared PostgreSQL test server), or with
``--private-server N`` a PostgreSQL started for the run with ``max_connections = N`` (the
direct mode at pod size needs more connections than a default server's 100: run it there, not
on a server others use).

Per mode it waits for every worker to end (``--timeout-s``: longer is a hang), then checks:
exactly ``--trials`` finished (COMPLETE + PRUNED), none RUNNING or FAIL (WAITING ones are asks
put back by a worker that came too late), every worker exited 0, no storage error, traceback or
error line in the logs, every timed report stored. It prints per mode: epochs reported and their
report time (median, p95); database connections held (``pg_stat_activity`` by the run's
``application_name`` every ``--sample-s``: peak, median, and whose at the peak, from the client
ports of the run's processes); the peak of trial processes alive at once; wall time; CPU time
and peak PSS of every process it started (``bench/procfs.py`` reads them).

Every process it starts is stopped by its PID (SIGTERM, then SIGKILL), the studies deleted and
a private server removed, also after Ctrl-C. Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import optuna
import sqlalchemy

REPO = Path(__file__).resolve().parents[1]
FAKE = REPO / "tests" / "search"  # the stand-in trainer and its space
sys.path[:0] = [str(REPO), str(FAKE)]

from fake_fit import REPORT_TIMES  # noqa: E402
from private_postgres import PrivatePostgres  # noqa: E402
from procfs import Sample, Sampler, cpu_seconds, tagged, trial_pids  # noqa: E402
from search_testing import drop_study, free_port, write_cli_space  # noqa: E402

from search.storage.sql import open_storage  # noqa: E402
from search.storage.urls import redact  # noqa: E402

DEFAULT_DB = os.environ.get("OCTSEARCH_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
STOP_WAIT_S = 60.0  # after SIGTERM, how long a worker may take to stop its trials (25 s each)
PROXY_START_S = 60.0
PSS_EVERY = 5  # samples between two memory samples (reading smaps costs CPU)
# A line of a worker or the proxy that is not a normal run's: a storage error, an outage ridden
# out, a traceback, a failed trial. (A normal run's lines: progress, trial ends, the fake trainer's
# epochs, the pruner's reasons, the leaderboard.)
TROUBLE = re.compile(r"Traceback|[Ee]rror|[Ee]xception|unreachable|outage|too many clients|deadlock|"
                     r"FAIL|retrying|timed out", re.ASCII)


# --- the processes of a run --------------------------------------------------------------------


@dataclass
class Started:
    role: str  # "worker" | "proxy"
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Processes:
    """What this script started, stopped by PID in :meth:`stop_all` (workers first)."""

    runs_dirs: list[Path] = field(default_factory=list)
    started: list[Started] = field(default_factory=list)

    def start(self, role: str, command: list[str], log: Path, env: dict[str, str]) -> Started:
        """The proxy in a session of its own: a terminal's Ctrl-C reaches the workers, which
        then re-queue their trials through it, and :meth:`stop_all` stops it after them."""
        with open(log, "wb") as out:
            proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, start_new_session=role == "proxy")
        self.started.append(Started(role, proc, log))
        return self.started[-1]

    def alive(self, role: str | None = None) -> list[Started]:
        return [s for s in self.started if s.proc.poll() is None and role in (None, s.role)]

    def stop_all(self) -> int:
        """SIGTERM every worker still running (it stops and re-queues its trials), then the
        proxy; SIGKILL what is left after :data:`STOP_WAIT_S`, and any trial process of ours
        that outlived its worker. How many processes had to be stopped."""
        stopped = 0
        for role in ("worker", "proxy"):
            running = self.alive(role)
            stopped += len(running)
            for s in running:
                s.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_WAIT_S
            for s in running:
                try:
                    s.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    s.proc.kill()
                    s.proc.wait()
        for pid in trial_pids(self.runs_dirs):  # normally none: a trial dies with its worker
            stopped += 1
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return stopped


# --- one mode ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    mode: str
    database: str
    wall_s: float
    cpu_s: float  # of every process of the mode
    proxy_cpu_s: float  # of which the proxy's
    samples: list[Sample]
    report_s: list[float]
    problems: list[str]


def child_env(args: argparse.Namespace) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(FAKE), os.environ.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1", "FAKE_FIT_EPOCH_S": str(args.epoch_s), "FAKE_FIT_REPORT_TIMES": "1"}


def start_proxy(processes: Processes, db_url: str, folder: Path, env: dict[str, str]) -> str:
    """``octsearch serve-storage`` in front of ``db_url`` on a free port; its grpc:// URL."""
    port = free_port()
    proxy = processes.start("proxy", [sys.executable, "-m", "search.cli", "serve-storage", "--storage", db_url,
                                      "--port", str(port)], folder / "proxy.log", env)
    url = f"grpc://127.0.0.1:{port}"
    deadline = time.monotonic() + PROXY_START_S
    while f"use --storage {url}" not in proxy.log.read_text():
        if proxy.proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"pod_load: the proxy did not start: {proxy.log.read_text().strip()}")
        time.sleep(0.1)
    return url


def run_mode(mode: str, db_url: str, database: str, args: argparse.Namespace, workdir: Path,
             processes: Processes, studies: list[str]) -> Outcome:
    tag = f"podload-{mode}-{uuid.uuid4().hex[:8]}"
    name = tag  # the study's name too
    studies.append(name)
    folder = workdir / mode
    folder.mkdir(parents=True)
    runs = folder / "runs"
    processes.runs_dirs.append(runs)
    space = write_cli_space(folder / "space.yaml", overrides={"train.epochs": args.epochs})
    env = child_env(args)
    print(f"pod_load: {mode}: study {name}", flush=True)
    sampler = Sampler(db_url, tag, processes, PSS_EVERY)
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    try:
        storage = start_proxy(processes, tagged(db_url, tag), folder, env) if mode == "proxy" else tagged(db_url, tag)
        workers = []
        for i in range(args.hosts):
            command = [sys.executable, str(Path(__file__).resolve()), "worker", str(args.chips), "run",
                       "--space", str(space), "--trials", str(args.trials), "--parallel", str(args.chips),
                       "--seed", str(i), "--device", "cpu", "--storage", storage, "--study", name,
                       "--runs-dir", str(runs), "--fit-target", "fake_fit:fit"]
            workers.append(processes.start("worker", command, folder / f"worker{i:02d}.log", env))
            sampler.sample()
            time.sleep(args.start_gap_s)
        deadline = start + args.timeout_s
        while any(w.proc.poll() is None for w in workers) and time.monotonic() < deadline:
            sampler.sample()
            time.sleep(args.sample_s)
        hung = [w for w in workers if w.proc.poll() is None]
        wall = time.monotonic() - start
        proxy_cpu = sum(cpu_seconds(p.proc.pid) for p in processes.alive("proxy"))
        processes.stop_all()
    finally:
        sampler.close()
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    problems = [f"{len(hung)} workers still running after --timeout-s {args.timeout_s:g} (a hang?)"] if hung else []
    problems += [f"{w.log.name}: exit status {w.proc.returncode}" for w in workers
                 if w not in hung and w.proc.returncode != 0]
    for s in processes.started:
        if s in workers or (s.role == "proxy" and s.log.parent == folder):
            lines = [line for line in s.log.read_text(errors="replace").splitlines() if TROUBLE.search(line)]
            problems += [f"{s.log.name}: {line.strip()}" for line in lines[:3]]
            if len(lines) > 3:
                problems.append(f"{s.log.name}: ... {len(lines) - 3} more such lines")
    report_s = [float(line.split()[1]) for path in sorted(runs.glob(f"*/trial_*/{REPORT_TIMES}"))
                for line in path.read_text().splitlines()]
    problems += study_problems(db_url, name, args.trials, len(report_s))
    return Outcome(mode, database, wall, cpu, proxy_cpu, sampler.samples, report_s, problems)


def study_problems(db_url: str, name: str, wanted: int, reports: int) -> list[str]:
    """What is wrong with the study's trials at the end: finished != wanted, any RUNNING or
    FAIL trial, a timed report not stored. (A WAITING trial is not: a worker that asked for a
    trial when others had already asked for the last ones puts it back in the queue.)"""
    storage = open_storage(db_url, heartbeat=False, create=False)
    assert isinstance(storage, optuna.storages.RDBStorage)
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    except KeyError:
        return [f"no study {name!r} in the database: no worker got as far as creating it"]
    finally:
        storage.engine.dispose()
    states = Counter(t.state.name for t in trials)
    problems = []
    if states["COMPLETE"] + states["PRUNED"] != wanted:
        problems.append(f"{states['COMPLETE'] + states['PRUNED']} finished trials, not {wanted}: {dict(states)}")
    problems += [f"{states[state]} {state} trials at the end" for state in ("RUNNING", "FAIL") if states[state]]
    stored = sum(len(t.intermediate_values) for t in trials)
    if stored != reports:
        problems.append(f"{reports} timed reports but {stored} stored intermediate values")
    return problems


# --- the table ---------------------------------------------------------------------------------


HEADER = ("| mode | database | workers × slots | trials | peak trial processes | epochs reported | "
          "report median ms | report p95 ms | DB connections peak | DB connections median | wall s | "
          "CPU s | peak PSS GiB |")


def row(o: Outcome, args: argparse.Namespace) -> str:
    times = sorted(o.report_s)
    median = 1e3 * statistics.median(times) if times else float("nan")
    p95 = 1e3 * times[min(len(times) - 1, int(0.95 * len(times)))] if times else float("nan")
    connections = [s.connections for s in o.samples] or [0]
    pss = [s.pss_kib for s in o.samples if s.pss_kib is not None] or [0]
    return (f"| {o.mode} | {o.database} | {args.hosts} × {args.chips} | {args.trials} | "
            f"{max((s.trials for s in o.samples), default=0)} | {len(times)} | {median:.1f} | {p95:.1f} | "
            f"{max(connections)} | {statistics.median(connections):g} | {o.wall_s:.0f} | {o.cpu_s:.0f} | "
            f"{max(pss) / 2**20:.1f} |")


def concurrency_note(o: Outcome, slots: int) -> str:
    """When the most trial processes were alive, and for how long every slot had one."""
    if not o.samples:
        return f"{o.mode}: no sample"
    start = o.samples[0].t
    peak = max(o.samples, key=lambda s: s.trials)
    busy = [(a.t, b.t) for a, b in pairwise(o.samples) if a.trials >= slots]
    full = (f"all {slots} slots busy for {sum(b - a for a, b in busy):.0f} s, first at {busy[0][0] - start:.0f} s"
            if busy else f"never all {slots} slots busy at once")
    return f"{o.mode}: peak {peak.trials} trial processes alive at {peak.t - start:.0f} s; {full}"


def connections_note(o: Outcome) -> str:
    """Whose the database connections were at the peak, and per process."""
    if not o.samples:
        return f"{o.mode}: no sample"
    peak = max(o.samples, key=lambda s: s.connections)
    parts = ", ".join(f"{role} {n}" for role, n in sorted(peak.by_role.items()))
    proxy = f"; the proxy used {o.proxy_cpu_s:.0f} s of the {o.cpu_s:.0f} CPU s" if o.mode == "proxy" else ""
    return (f"{o.mode}: {peak.connections} connections at the peak ({parts or 'none'}) with "
            f"{peak.trials} trial processes alive{proxy}")


# --- main --------------------------------------------------------------------------------------


def simulated_host(argv: list[str]) -> int:
    """``pod_load.py worker CHIPS ARGS``: ``octsearch ARGS`` on a host of CHIPS simulated chips."""
    import search.trial
    from search.cli import main as octsearch

    chips = list(range(int(argv[0])))
    search.trial.host_devices = lambda setting: ("tpu", chips)  # what octsearch run asks
    return octsearch(argv[1:])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=32, help="workers (default: 32)")
    parser.add_argument("--chips", type=int, default=4, help="trial slots of each worker (default: 4)")
    parser.add_argument("--trials", type=int, help="finished trials wanted (default: 2 per slot)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of a trial that is not pruned (default: 4)")
    parser.add_argument("--epoch-s", type=float, default=90.0,
                        help="seconds per fake epoch (default: 90: on 2 cores, starting 160 processes takes "
                             "longer than 3 epochs of 10 s, and the first trials would end before the last start)")
    parser.add_argument("--modes", default="proxy,direct", help="proxy, direct or both (default: both)")
    parser.add_argument("--storage", default=DEFAULT_DB, help="the PostgreSQL database (default: the test server)")
    parser.add_argument("--private-server", type=int, metavar="MAX_CONNECTIONS",
                        help="instead, a PostgreSQL started for the run with this max_connections")
    parser.add_argument("--start-gap-s", type=float, default=0.25, help="between two workers' starts")
    parser.add_argument("--sample-s", type=float, default=1.0, help="between two samples of the connections")
    parser.add_argument("--timeout-s", type=float, default=1800.0, help="a mode still running after this is a hang")
    parser.add_argument("--workdir", type=Path, help="logs and run directories, kept (default: a temporary one)")
    args = parser.parse_args(argv)
    if min(args.hosts, args.chips, args.epochs) < 1 or args.epoch_s < 0:
        parser.error(f"--hosts, --chips and --epochs must be >= 1 and --epoch-s >= 0, got {args.hosts}, "
                     f"{args.chips}, {args.epochs}, {args.epoch_s:g}")
    args.trials = args.trials or 2 * args.hosts * args.chips
    args.modes = args.modes.split(",")
    if not set(args.modes) <= {"proxy", "direct"}:
        parser.error(f"--modes must be proxy, direct or both, got {','.join(args.modes)}")
    if sqlalchemy.engine.make_url(args.storage).get_backend_name() != "postgresql":
        parser.error(f"--storage must be a PostgreSQL database (connections are counted there), got {args.storage}")
    return args


@contextmanager
def terminated_as_interrupt() -> Iterator[None]:
    """SIGTERM ends this script as Ctrl-C does: through the clean-up."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        return simulated_host(argv[1:])
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="podload-"))
    processes, studies, outcomes = Processes(), list[str](), list[Outcome]()
    server: PrivatePostgres | None = None
    with terminated_as_interrupt():
        try:
            if args.private_server:
                server = PrivatePostgres({"max_connections": str(args.private_server)})
                server.start()
            db_url = server.url if server else args.storage
            database = f"private, max_connections {args.private_server}" if server else "shared"
            print(f"pod_load: {args.hosts} workers x {args.chips} slots = {args.hosts * args.chips} trials at once, "
                  f"{args.trials} trials of <= {args.epochs} epochs of {args.epoch_s:g} s; database "
                  f"{redact(db_url)} ({database}); logs in {workdir}", flush=True)
            for mode in args.modes:
                print(f"pod_load: {mode}: load average before " + ", ".join(f"{v:.1f}" for v in os.getloadavg()),
                      flush=True)
                outcomes.append(run_mode(mode, db_url, database, args, workdir, processes, studies))
                print(f"pod_load: {mode}: {outcomes[-1].wall_s:.0f} s; load average after "
                      + ", ".join(f"{v:.1f}" for v in os.getloadavg()), flush=True)
        except KeyboardInterrupt:
            print(f"pod_load: interrupted; stopped {processes.stop_all()} processes", file=sys.stderr)
            raise
        finally:
            processes.stop_all()
            for name in studies:
                drop_study(server.url if server else args.storage, name)
            if server is not None:
                server.remove()
            if args.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
    print(HEADER)
    print("|" + "---|" * HEADER.count(" | ") + "---|")
    for o in outcomes:
        print(row(o, args))
    for o in outcomes:
        print(concurrency_note(o, args.hosts * args.chips))
        print(connections_note(o))
    failed = False
    for o in outcomes:
        print(f"{o.mode}: " + ("checks passed" if not o.problems else "CHECKS FAILED:"))
        for problem in o.problems:
            print(f"  {problem}")
        failed = failed or bool(o.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)  # cleaned up: main said so
