"""Trials per hour of one worker running 1, 2, ... trials at once (``octsearch run --parallel``).

    bench/parallel.py --space spaces/smoke.yaml --trials 6 --parallel 1 2

Runs ``octsearch run`` (the real CLI, real trainer, a trial per process) on the space once per
``--parallel`` value, each time a new study with the same sampler seed, and prints trials and
epochs per hour of wall time. Pruning is switched off (``pruner: none``) so that every run
trains the same trials to the end: the enqueued trials and the sampler's seeded random startup
trials are asked in the same order whatever the parallelism (keep ``--trials`` within them,
3 + 4 on the smoke space, for identical work). The preprocessing cache is warmed once before
the first run and shared (a long search's steady state). On a CPU host the slots share the
cores this process may use (``--parallel 2`` on 2 cores: one core and one torch thread per
trial, against one trial with 2 threads).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml

from octtrain.data.dataset import blank_volumes, build_datasets
from octtrain.synthetic.writer import make_synthetic
from search.contract import epoch_metrics
from search.space.search_space import load_space
from search.study.counting import FINISHED


@dataclass(frozen=True)
class Run:
    parallel: int
    finished: int
    epochs: int
    wall_s: float
    trial_s: float  # mean duration of a finished trial
    outside_s: float  # of which outside its epochs: process start, data and model set-up

    @property
    def trials_per_hour(self) -> float:
        return self.finished * 3600 / self.wall_s

    @property
    def epochs_per_hour(self) -> float:
        return self.epochs * 3600 / self.wall_s


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="spaces/smoke.yaml", help="search space YAML")
    parser.add_argument("--trials", type=int, default=6, help="finished trials per run")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2],
                        help="--parallel of each run")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed of every run")
    parser.add_argument("--manifest", help="data (default: the space's, else new phantoms)")
    parser.add_argument("--volumes", type=int, default=720,
                        help="phantoms to write when the space's data is missing (default: 720)")
    parser.add_argument("--epochs", type=int, help="train.epochs of every trial (default: the space's)")
    parser.add_argument("--workdir", help="studies, runs, caches (default: a temporary directory)")
    parser.add_argument("--fit-target", default="octtrain:fit", help=argparse.SUPPRESS)  # tests
    args = parser.parse_args(argv)
    if args.trials < 1 or min(args.parallel) < 1:
        parser.error("--trials and --parallel must be >= 1")
    return args


def prepare_space(args: argparse.Namespace, workdir: Path) -> Path:
    """The space with pruning off, paths made absolute, and the data in place."""
    raw = yaml.safe_load(Path(args.space).read_text())
    if isinstance(raw.get("base"), str):
        raw["base"] = str(Path(raw["base"]).resolve())
    overrides = raw.setdefault("overrides", {})
    manifest = args.manifest or overrides.get("data.manifest")
    if manifest is not None:  # else the base config's own
        if not Path(manifest).exists():
            manifest = str(phantoms(workdir / "data", args.volumes))
        overrides["data.manifest"] = str(Path(manifest).resolve())
    if args.epochs is not None:
        overrides["train.epochs"] = args.epochs
    overrides["data.cache_dir"] = str(workdir / "cache")  # warmed below, shared by every run
    raw["pruner"] = "none"
    path = workdir / "space.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    start = time.monotonic()
    blank_volumes(build_datasets(load_space(path).base.data), 0, 1)  # preprocess every volume
    print(f"parallel: preprocessing cache warmed in {time.monotonic() - start:.0f} s", flush=True)
    return path


def phantoms(folder: Path, n_volumes: int) -> Path:
    """The manifest of ``n_volumes`` phantoms in ``folder``, written unless already there."""
    manifest = folder / "manifest.csv"
    if manifest.exists() and len(manifest.read_text().splitlines()) == n_volumes + 1:
        return manifest
    print(f"parallel: writing {n_volumes} phantoms to {folder}", flush=True)
    return Path(make_synthetic(folder, n_volumes=n_volumes, seed=0))


def run_search(space: Path, parallel: int, args: argparse.Namespace, workdir: Path) -> Run:
    storage = f"sqlite:///{workdir / f'parallel{parallel}.db'}"
    name = f"parallel{parallel}"
    cmd = [sys.executable, "-m", "search.cli", "run", "--space", str(space), "--trials",
           str(args.trials), "--parallel", str(parallel), "--seed", str(args.seed), "--device",
           "cpu", "--storage", storage, "--study", name, "--runs-dir", str(workdir / "runs"),
           "--fit-target", args.fit_target]
    print(f"parallel: {' '.join(cmd[1:])}", flush=True)
    start = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.monotonic() - start
    print(f"parallel: --parallel {parallel} took {wall:.0f} s; load average (1, 5, 15 min) now "
          + ", ".join(f"{v:.1f}" for v in os.getloadavg()), flush=True)
    return summarize(optuna.load_study(study_name=name, storage=storage), parallel, wall)


def summarize(study: optuna.Study, parallel: int, wall_s: float) -> Run:
    """A finished run: its trials, epochs, and the mean time of a trial in and out of epochs."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]
    durations = [t.duration.total_seconds() for t in trials if t.duration is not None]
    epoch_s = [float((epoch_metrics(t, k) or {}).get("epoch_s") or 0.0)
               for t in trials for k in t.intermediate_values]
    n = max(1, len(trials))
    return Run(parallel, len(trials), len(epoch_s), wall_s, sum(durations) / n,
               (sum(durations) - sum(epoch_s)) / n)


def format_table(runs: list[Run]) -> str:
    base = min(runs, key=lambda r: r.parallel)
    lines = ["| --parallel | trials | epochs | wall (s) | mean trial (s) | outside epochs (s) "
             f"| trials/h | epochs/h | vs --parallel {base.parallel} |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r.parallel} | {r.finished} | {r.epochs} | {r.wall_s:.0f} | "
                     f"{r.trial_s:.0f} | {r.outside_s:.0f} | {r.trials_per_hour:.0f} | "
                     f"{r.epochs_per_hour:.0f} | "
                     f"{r.trials_per_hour / base.trials_per_hour:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="octsearch-parallel-") as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        space = prepare_space(args, workdir)
        runs = [run_search(space, p, args, workdir) for p in args.parallel]
    print(f"\n{args.space}, {args.trials} trials, pruning off, seed {args.seed}, "
          f"{len(os.sched_getaffinity(0))} cores:")
    print(format_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
