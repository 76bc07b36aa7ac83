"""A chaos soak: workers, trial processes and the database killed and stopped at random moments,
then the promises of a search that loses nothing checked from the database and the run folders.

    .venv/bin/python bench/chaos.py --minutes 20 --trials 200 --workers 6 --seed 0

What runs (all on this host, on loopback, all started and ended here by PID):

- a private PostgreSQL (``initdb`` in a temporary folder, its own port: tests/search/private_postgres.py);
- one storage proxy (``octsearch serve-storage``) in front of it;
- ``--workers`` workers (``octsearch run``, the real CLI): every second one with ``--parallel 2``,
  every third one through the proxy, the rest straight to the database; each trial a real trial
  process running the stand-in trainer (tests/search/fake_fit.py, ``--epoch-s`` per epoch);
- a driver that, at random moments (``--faults`` per minute on average), does one of:

  ============== =============================================================================
  worker-kill    SIGKILL a worker (its trial processes stop through their lifeline)
  worker-term    SIGTERM a worker (a spot VM's notice)
  worker-int2    Ctrl-C twice, 0.3 s apart
  worker-signals 2-4 SIGINT/SIGTERM in random order, 0-2 s apart (into the stop grace)
  trial-kill     SIGKILL a trial process (the OOM killer)
  trial-term     SIGTERM a trial process (a scheduler)
  trial-int2     SIGINT twice to a trial process
  db-outage      stop the database for 5-30 s (``--outage-s``), then start it
  ============== =============================================================================

  and restarts every worker that exited before the study was done.

When time is up it injects nothing more, restarts the workers that are down, waits for all of
them to end, and checks (exit status 1 if one fails):

- exactly ``--trials`` finished (COMPLETE + PRUNED), none RUNNING, no continuation or stale retry
  WAITING (a new trial put back by a worker that asked one too many may wait: the counting rule);
- every epoch of every finished trial stored once (its intermediate values are epochs 0..k);
- every trial stopped with a resume checkpoint has a continuation that resumed from it (its run
  directory shows no epoch before the checkpoint's), none started from scratch;
- no ``resume.pt``, temporary file, undelivered result or epoch queue left in the run folders;
- no trial process left; no traceback in any worker's output (a Ctrl-C to a worker still importing
  is Python's own report: counted as ``interrupted_while_importing``). Slice: tests/bench/test_chaos.py.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests" / "search"
sys.path[:0] = [str(TESTS), str(Path(__file__).resolve().parent)]
from private_postgres import PrivatePostgres  # noqa: E402
from procfs import trial_pids  # noqa: E402
from search_testing import FAKE_SPACE, free_port, write_dataset  # noqa: E402

from search.contract import (  # noqa: E402
    RESUME_FROM_ATTR,
    RESUMES_TRIAL_ATTR,
    preempted_checkpoint,
    runs_first,
    runs_folder,
)
from search.storage.sql import open_storage  # noqa: E402
from search.trial.epoch_queue import QUEUE_FILE  # noqa: E402
from search.worker.pending import MARKER_FILE  # noqa: E402

FAULTS = ("worker-kill", "worker-term", "worker-int2", "worker-signals", "trial-kill", "trial-term",
          "trial-int2", "db-outage")
OCTSEARCH = Path(sys.executable).parent / "octsearch"
STUDY = "chaos"


@dataclass
class Worker:
    index: int
    url: str
    parallel: int
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    exits: list[int] = field(default_factory=list)

    def start(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.starts += 1
        log = open(self.log_dir / f"worker-{self.index}-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen([*command, "--storage", self.url, "--parallel", str(self.parallel)],
                                     cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def reap(self) -> int | None:
        """Its exit status, once, when it has exited; None while it runs (or was reaped)."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        self.exits.append(code)
        self.proc = None
        return code


def send(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, sig)


class Chaos:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args, self.root = args, root
        self.rng = random.Random(args.seed)
        self.runs = root / "runs"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True)
        self.injected: collections.Counter[str] = collections.Counter()
        self.done = False  # a worker ended with the study done
        self.db: PrivatePostgres | None = None
        self.proxy: subprocess.Popen[bytes] | None = None
        self.workers: list[Worker] = []

    # -- set-up ----------------------------------------------------------------------------------

    def setup(self) -> None:
        self.db = PrivatePostgres()
        self.db.start()
        port = free_port()
        with open(self.logs / "proxy.log", "wb") as log:
            self.proxy = subprocess.Popen([str(OCTSEARCH), "serve-storage", "--storage", self.db.url,
                                           "--port", str(port)], cwd=self.root, stdout=log,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while "use --storage" not in (self.logs / "proxy.log").read_text():
            assert self.proxy.poll() is None and time.monotonic() < deadline, "the proxy did not start"
            time.sleep(0.1)
        proxy_url = f"grpc://127.0.0.1:{port}"
        manifest = str(write_dataset(self.root / "data"))
        space = dict(FAKE_SPACE, base={**FAKE_SPACE["base"], "data": {"manifest": manifest},
                                       "train": {"epochs": self.args.epochs}})
        space["enqueue"] = [{"name": f"seed{i}", "params": {"model.head.hidden": 64, "train.lr_head": lr}}
                            for i, lr in enumerate((1e-3, 2e-3, 3e-3))]
        (self.root / "chaos.yaml").write_text(yaml.safe_dump(space))
        self.command = [str(OCTSEARCH), "run", "--space", str(self.root / "chaos.yaml"), "--trials",
                        str(self.args.trials), "--study", STUDY, "--runs-dir", str(self.runs),
                        "--fit-target", "fake_fit:fit", "--max-failures", "1000", "--db-outage-s", "300"]
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]),
                    "FAKE_FIT_EPOCH_S": str(self.args.epoch_s), "PYTHONUNBUFFERED": "1"}
        for i in range(self.args.workers):
            url = proxy_url if i % 3 == 2 else self.db.url
            self.workers.append(Worker(i, url, 2 if i % 2 else 1, self.logs))
        for worker in self.workers:
            worker.start(self.command, self.env, self.root)
            time.sleep(0.5)  # the first creates the study, the others join it

    # -- the soak --------------------------------------------------------------------------------

    def restart_the_fallen(self) -> None:
        for worker in self.workers:
            code = worker.reap()
            if code == 0:
                self.done = True  # it stopped because the study has its trials
            elif code is not None and not self.done:
                worker.start(self.command, self.env, self.root)

    def inject(self, kind: str) -> bool:
        """One fault of ``kind``; False when there was nothing to hit."""
        rng = self.rng
        if kind.startswith("worker-"):
            alive = [w for w in self.workers if w.running()]
            if not alive:
                return False
            proc = rng.choice(alive).proc
            assert proc is not None
            if kind == "worker-kill":
                proc.kill()
            elif kind == "worker-term":
                proc.send_signal(signal.SIGTERM)
            elif kind == "worker-int2":
                proc.send_signal(signal.SIGINT)
                time.sleep(0.3)
                proc.send_signal(signal.SIGINT)
            else:
                for _ in range(rng.randint(2, 4)):
                    proc.send_signal(rng.choice((signal.SIGINT, signal.SIGTERM)))
                    time.sleep(rng.uniform(0, 2))
            return True
        if kind.startswith("trial-"):
            pids = trial_pids([self.runs])
            if not pids:
                return False
            pid = rng.choice(pids)
            if kind == "trial-kill":
                send(pid, signal.SIGKILL)
            elif kind == "trial-term":
                send(pid, signal.SIGTERM)
            else:
                send(pid, signal.SIGINT)
                time.sleep(0.3)
                send(pid, signal.SIGINT)
            return True
        assert kind == "db-outage" and self.db is not None
        low, high = self.args.outage_s
        self.db.stop()
        time.sleep(rng.uniform(low, high))
        self.db.start()
        return True

    def soak(self) -> None:
        kinds = [k for k in self.args.faults]
        end = time.monotonic() + self.args.minutes * 60
        interval = 60.0 / self.args.rate
        started = time.monotonic()
        while time.monotonic() < end and not self.done:
            time.sleep(self.rng.expovariate(1.0 / interval))
            self.restart_the_fallen()
            if self.done:
                break
            kind = self.rng.choice(kinds)
            if self.inject(kind):
                self.injected[kind] += 1
                total = sum(self.injected.values())
                if total % 10 == 0:
                    print(f"chaos: {total} faults in {(time.monotonic() - started) / 60:.1f} min: "
                          f"{dict(self.injected)}; {self.finished()} finished", file=sys.stderr, flush=True)

    def finished(self) -> int:
        assert self.db is not None
        try:
            study = optuna.load_study(study_name=STUDY, storage=open_storage(self.db.url, heartbeat=False))
            return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        except Exception:  # noqa: BLE001 - the database may be down just now
            return -1

    def finish(self, limit_s: float) -> None:
        """No more faults: keep every worker up until the study is done and they all ended."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            for worker in self.workers:
                code = worker.reap()
                if code == 0:
                    self.done = True
                elif code is not None:
                    worker.start(self.command, self.env, self.root)
            if self.done and not any(w.running() for w in self.workers):
                return
            time.sleep(1)
        raise TimeoutError(f"the workers did not finish the study within {limit_s:g} s")

    # -- the check -------------------------------------------------------------------------------

    def check(self) -> dict[str, Any]:
        assert self.db is not None
        study = optuna.load_study(study_name=STUDY, storage=open_storage(self.db.url, heartbeat=False))
        trials = study.get_trials(deepcopy=False)
        by_state = collections.Counter(t.state.name for t in trials)
        finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        folder = self.runs / runs_folder(study)
        gaps = [t.number for t in finished
                if sorted(t.intermediate_values) != list(range(len(t.intermediate_values)))]
        stopped = [(t, c) for t in trials if (c := preempted_checkpoint(t)) is not None]
        continuation = {t.user_attrs.get(RESUMES_TRIAL_ATTR): t for t in trials
                        if t.user_attrs.get(RESUMES_TRIAL_ATTR) is not None}
        not_resumed = []
        for trial, (checkpoint, done) in stopped:
            follow = continuation.get(trial.number)
            if follow is None or follow.user_attrs.get(RESUME_FROM_ATTR) != checkpoint:
                not_resumed.append(trial.number)
                continue
            run_dir = folder / f"trial_{follow.number:04d}"
            if any((run_dir / f"started_{e}").exists() for e in range(done)):
                not_resumed.append(trial.number)  # it ran an epoch the checkpoint had done
        restarts = sum(1 for t in continuation.values() if RESUME_FROM_ATTR not in t.user_attrs)
        leftovers = sorted(str(p.relative_to(self.runs)) for p in self.runs.rglob("*")
                           if p.name in ("resume.pt", MARKER_FILE, QUEUE_FILE) or p.name.endswith(".tmp"))
        orphans = trial_pids([self.runs])
        tracebacks, starting = [], []
        for log in sorted(self.logs.glob("worker-*.log")):
            text = log.read_text(errors="replace")
            if "Traceback" not in text:
                continue
            # Ctrl-C to a worker still importing, before its handlers (and before it opened
            # anything): Python's own KeyboardInterrupt report. Counted, not a failure.
            before = text[:text.index("Traceback")]
            if "octsearch:" not in before and text.rstrip().endswith("KeyboardInterrupt"):
                starting.append(log.name)
            else:
                tracebacks.append(log.name)
        invariants = {
            f"exactly {self.args.trials} finished": len(finished) == self.args.trials,
            "none RUNNING, no continuation or retry WAITING": by_state["RUNNING"] == 0 and not [
                t for t in trials if t.state == TrialState.WAITING and runs_first(t)],
            "every epoch stored once": not gaps,
            "every checkpoint resumed, none restarted from scratch": not not_resumed,
            "no resume.pt, .tmp, undelivered result or epoch queue left": not leftovers,
            "no trial process left": not orphans,
            "no traceback in worker output": not tracebacks,
        }
        return {
            "faults": dict(self.injected), "faults_total": sum(self.injected.values()),
            "trials": len(trials), "states": dict(by_state), "finished": len(finished),
            "stopped_with_checkpoint": len(stopped), "restarted_without_checkpoint": restarts,
            "stale_retries": sum(1 for t in trials if t.system_attrs.get("failed_trial") is not None),
            "worker_starts": sum(w.starts for w in self.workers),
            "worker_exits": dict(collections.Counter(c for w in self.workers for c in w.exits)),
            "invariants": invariants, "epoch_gaps": gaps, "not_resumed": not_resumed,
            "leftovers": leftovers[:20], "orphans": orphans, "tracebacks": tracebacks,
            "interrupted_while_importing": len(starting),
        }

    # -- clean-up ----------------------------------------------------------------------------------

    def teardown(self) -> None:
        for worker in self.workers:
            if worker.running():
                assert worker.proc is not None
                worker.proc.kill()
                worker.proc.wait()
        for pid in trial_pids([self.runs]):
            send(pid, signal.SIGKILL)
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.send_signal(signal.SIGTERM)
            try:
                self.proxy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proxy.kill()
        if self.db is not None:
            self.db.remove()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="how long to inject faults")
    parser.add_argument("--trials", type=int, default=200, help="finished trials the study wants")
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--rate", type=float, default=10.0, help="faults per minute, on average")
    parser.add_argument("--faults", type=lambda s: s.split(","), default=list(FAULTS),
                        help=f"comma-separated kinds (default all: {','.join(FAULTS)})")
    parser.add_argument("--outage-s", type=lambda s: tuple(float(x) for x in s.split("-")), default=(5.0, 30.0),
                        help="how long a database outage lasts, LOW-HIGH seconds (default 5-30)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--epoch-s", type=float, default=1.0, help="seconds per fake epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finish-s", type=float, default=900.0,
                        help="after the faults, how long the workers may take to end the study")
    parser.add_argument("--root", type=Path, required=True, help="a new folder for the run (kept)")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args(argv)
    unknown = [k for k in args.faults if k not in FAULTS]
    if unknown:
        parser.error(f"unknown fault kinds {unknown}; choose from {', '.join(FAULTS)}")
    args.root.mkdir(parents=True, exist_ok=False)
    # SIGTERM or Ctrl-C end the soak with its clean-up, also when it was started in the
    # background (where a shell leaves SIGINT ignored): every process it started, by PID.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    chaos = Chaos(args, args.root.resolve())
    start = time.monotonic()
    try:
        chaos.setup()
        chaos.soak()
        faults_s = time.monotonic() - start
        chaos.finish(args.finish_s)
        result = chaos.check()
    finally:
        chaos.teardown()
    result.update(wall_s=round(time.monotonic() - start), faults_s=round(faults_s))
    print(f"chaos soak: {result['faults_total']} faults in {faults_s / 60:.1f} min, then "
          f"{(result['wall_s'] - faults_s) / 60:.1f} min to finish; {args.workers} workers "
          f"({result['worker_starts']} starts), {result['trials']} trials")
    print(f"{'fault':<16}{'injected':>9}")
    for kind in FAULTS:
        print(f"{kind:<16}{result['faults'].get(kind, 0):>9}")
    print(f"trial states: {result['states']}; stopped with a checkpoint: {result['stopped_with_checkpoint']}, "
          f"re-queued to start again: {result['restarted_without_checkpoint']}, stale retries: "
          f"{result['stale_retries']}; worker exit statuses: {result['worker_exits']}; Ctrl-C while a "
          f"worker was importing: {result['interrupted_while_importing']}")
    for name, ok in result["invariants"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    for key in ("epoch_gaps", "not_resumed", "leftovers", "orphans", "tracebacks"):
        if result[key]:
            print(f"  {key}: {result[key]}")
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if all(result["invariants"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
