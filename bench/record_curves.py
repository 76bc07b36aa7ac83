"""Record full learning curves of configurations sampled from a search space (a tabular benchmark).

    bench/record_curves.py --space spaces/scenario_a.yaml --manifest data/synthetic/manifest.csv \
        --configs 60 --seed 0 --epochs 10 --out bench/data/curves-tuning.jsonl.gz

Samples ``--configs`` configurations from the space with Optuna's ``RandomSampler(seed)``, after
the space's enqueued trials, and trains each for the full ``--epochs`` with no pruning and no
early stopping. Each configuration runs through ``octtrain.fit`` with the search's own
:class:`~search.trial.reporter.EpochReporter` on an Optuna trial (``NopPruner``), so the per-epoch
record is exactly the one ``octsearch run`` stores (``octsearch:epoch_NNN`` attributes: balanced
accuracy, per-class metrics, prediction histogram, majority class and share, entropy, losses,
train metrics, ``epoch_s``); the trial's ``unfreeze_at_epoch`` is stored beside it.

Output: gzipped JSON lines. Line 1 is ``{"header": {...}}`` (how the file was made: space,
manifest, seeds, versions, host); every other line is one configuration::

    {"index": 3, "name": null, "params": {...}, "unfreeze_at_epoch": 2, "state": "complete",
     "error": null, "fit_s": 17.2, "epochs": [{"val/balanced_accuracy": ..., ...}, ...]}

Resumable: finished configurations are appended, one flushed line each, to ``OUT.partial``;
a rerun with the same arguments skips them (the sampler is replayed, so configuration ``i`` is
the same) and the gzipped ``OUT`` is written when all are done.

Sharded: ``--shard K/N`` records only the configurations whose index is K modulo N, into
``OUT.partial.K``, so N processes (one torch thread each) share the cores. Every shard skips what
any shard has finished, and the shard that finds all configurations done writes ``OUT``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna

from octtrain.errors import DivergedError, OcttrainError
from search.contract import epoch_metrics, write_schedule
from search.space.search_space import SearchSpace, load_space
from search.trial.reporter import EpochReporter

FORMAT = "octsearch-curves/1"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", required=True, help="search space YAML")
    parser.add_argument("--manifest", required=True, help="data manifest CSV (data.manifest)")
    parser.add_argument("--configs", type=int, required=True, help="random configurations (after the enqueued ones)")
    parser.add_argument("--seed", type=int, default=0, help="RandomSampler seed")
    parser.add_argument("--epochs", type=int, required=True, help="epochs per configuration (no pruning)")
    parser.add_argument("--out", required=True, help="output .jsonl.gz")
    parser.add_argument("--device", default="cpu", help="runtime.device for every configuration")
    parser.add_argument("--no-enqueued", action="store_true", help="skip the space's enqueued trials")
    parser.add_argument("--shard", default="0/1", metavar="K/N",
                        help="record only configurations with index %% N == K (default 0/1: all)")
    args = parser.parse_args(argv)
    try:
        args.shard_k, args.shard_n = (int(x) for x in args.shard.split("/"))
    except ValueError:
        parser.error(f"--shard must be K/N, got {args.shard!r}")
    if not 0 <= args.shard_k < args.shard_n:
        parser.error(f"--shard K/N needs 0 <= K < N, got {args.shard!r}")
    if args.configs < 1 or args.epochs < 1:
        parser.error(f"--configs and --epochs must be >= 1, got {args.configs} and {args.epochs}")
    if not Path(args.manifest).is_file():
        parser.error(f"--manifest {args.manifest!r} does not exist")
    return args


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def make_header(args: argparse.Namespace, space: SearchSpace) -> dict[str, Any]:
    import torch
    import transformers

    return {
        "format": FORMAT,
        "space_file": args.space,
        "space": space.to_dict(),
        "manifest": args.manifest,
        "manifest_sha256": _sha256(args.manifest),
        "configs": args.configs,
        "enqueued": not args.no_enqueued,
        "seed": args.seed,
        "epochs": args.epochs,
        "device": args.device,
        "metric": space.objective.metric_key,
        "direction": space.objective.direction,
        "host": socket.gethostname(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, torch threads {torch.get_num_threads()}",
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "optuna": optuna.__version__, "transformers": transformers.__version__},
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }


# Keys that must match for a rerun to continue a partial recording.
_RESUME_KEYS = ("format", "space", "manifest_sha256", "configs", "enqueued", "seed", "epochs", "device")
# (the shard is not among them: a recording may be resumed with another number of shards)


def partial_paths(out: Path) -> list[Path]:
    """Every partial file of a recording: unsharded (``OUT.partial``) and sharded (``OUT.partial.K``)."""
    return sorted(out.parent.glob(out.name + ".partial*")) if out.parent.is_dir() else []


def read_partials(out: Path, header: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Finished configurations of every partial file of ``out``, by index."""
    done: dict[int, dict[str, Any]] = {}
    for path in partial_paths(out):
        done.update(read_partial(path, header))
    return done


def read_partial(path: Path, header: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Finished configurations of an interrupted recording, by index; {} when there is none."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    try:
        old = json.loads(lines[0])["header"]
    except (IndexError, KeyError, json.JSONDecodeError):
        raise SystemExit(f"record_curves: {path} is not a partial recording; delete it to start over") from None
    changed = [k for k in _RESUME_KEYS if old.get(k) != header.get(k)]
    if changed:
        raise SystemExit(f"record_curves: {path} was made with other {', '.join(changed)}; "
                         "delete it or use the same arguments")
    done: dict[int, dict[str, Any]] = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the line being written when the run was killed
            continue
        done[int(row["index"])] = row
    return done


def configurations(space: SearchSpace,
                   args: argparse.Namespace) -> Iterator[tuple[optuna.Study, optuna.Trial, str | None]]:
    """Trials of an in-memory study: the enqueued ones, then ``--configs`` random ones.

    The sampler is replayed from the start on every run, so trial ``i`` always has the same
    parameters (a resumed recording asks and skips the finished ones)."""
    study = optuna.create_study(
        sampler=optuna.samplers.RandomSampler(seed=args.seed), pruner=optuna.pruners.NopPruner(),
        direction="maximize" if space.objective.maximize else "minimize")
    names: list[str | None] = []
    if not args.no_enqueued:
        for entry in space.enqueue:
            study.enqueue_trial(entry.params)
            names.append(entry.name)
    names += [None] * args.configs
    for name in names:
        yield study, study.ask(), name


def record_one(study: optuna.Study, trial: optuna.Trial, name: str | None, space: SearchSpace,
               args: argparse.Namespace, run_root: Path) -> dict[str, Any]:
    from octtrain import fit

    params = space.suggest(trial)
    overrides = {**params, "data.manifest": args.manifest, "train.epochs": args.epochs,
                 "train.early_stopping.enabled": False, "runtime.device": args.device}
    row: dict[str, Any] = {"index": trial.number, "name": name, "params": params,
                           "unfreeze_at_epoch": -1, "state": "complete", "error": None,
                           "fit_s": 0.0, "epochs": []}
    t0 = time.monotonic()
    try:
        cfg = space.trainer_config(overrides)
        unfreeze = cfg.model.unfreeze_at_epoch if cfg.model.freeze_encoder else -1
        row["unfreeze_at_epoch"] = unfreeze
        write_schedule(trial, unfreeze_at_epoch=unfreeze, epochs=args.epochs)
        fit(cfg, out_dir=run_root / f"config_{trial.number:04d}",
            on_epoch_end=EpochReporter(trial, space.objective.metric_key), progress=False)
    except DivergedError as err:  # octsearch run prunes these, with the reason
        row["state"] = "diverged"
        row["error"] = str(err)
    except OcttrainError as err:  # a configuration the trainer refuses
        row["state"] = "failed"
        row["error"] = f"{type(err).__name__}: {err}"
    row["fit_s"] = round(time.monotonic() - t0, 3)
    (stored,) = (t for t in study.get_trials(deepcopy=False) if t.number == trial.number)
    row["epochs"] = [m for k in range(args.epochs) if (m := epoch_metrics(stored, k)) is not None]
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # keeps the in-memory study small
    return row


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(args.space)
    header = make_header(args, space)
    out = Path(args.out)
    partial = out.with_name(out.name + ".partial" + (f".{args.shard_k}" if args.shard_n > 1 else ""))
    done = read_partials(out, header)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not partial.exists():
        partial.write_text(json.dumps({"header": header}) + "\n")
    elif not partial.read_text().endswith("\n"):  # the line being written when the run was killed
        with partial.open("a") as f:
            f.write("\n")
    total = args.configs + (0 if args.no_enqueued else len(space.enqueue))
    print(f"record_curves: {total} configurations x {args.epochs} epochs -> {out}"
          f"{f' (resuming: {len(done)} done)' if done else ''}", flush=True)
    t_start = time.monotonic()
    ran = 0
    with tempfile.TemporaryDirectory(prefix="octsearch-curves-") as tmp, partial.open("a") as sink:
        for study, trial, name in configurations(space, args):
            if trial.number in done or trial.number % args.shard_n != args.shard_k:
                space.suggest(trial)  # advance the sampler exactly as the first run did
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                continue
            row = record_one(study, trial, name, space, args, Path(tmp))
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            done[row["index"]] = row
            ran += 1
            elapsed = time.monotonic() - t_start
            mine = sum(1 for i in range(total) if i % args.shard_n == args.shard_k and i not in done)
            eta = elapsed / ran * mine
            best = max((e.get(space.objective.metric_key) or 0.0 for e in row["epochs"]), default=float("nan"))
            print(f"[{len(done)}/{total}] config {row['index']}{' ' + name if name else ''}: {row['state']}, "
                  f"{len(row['epochs'])} epochs, best {best:.3f}, {row['fit_s']:.0f}s "
                  f"(elapsed {elapsed / 60:.1f} min, eta {eta / 60:.1f} min)", flush=True)
    done = {**read_partials(out, header), **done}  # other shards' work too
    if len(done) < total:
        print(f"record_curves: shard {args.shard} done; {total - len(done)} configurations are left "
              f"to other shards (the last one to finish writes {out})", flush=True)
        return 0
    header["wall_s_this_run"] = round(time.monotonic() - t_start, 1)
    header["fit_s_total"] = round(sum(r["fit_s"] for r in done.values()), 1)
    with gzip.open(out, "wt") as f:
        f.write(json.dumps({"header": header}) + "\n")
        for index in sorted(done):
            f.write(json.dumps(done[index]) + "\n")
    for path in partial_paths(out):
        path.unlink(missing_ok=True)  # two shards may finish together
    print(f"record_curves: wrote {out} ({len(done)} configurations, "
          f"{header['fit_s_total'] / 60:.1f} min of training)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
