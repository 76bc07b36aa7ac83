"""A live check of the replay benchmark: one real search, run twice (no pruning, then the space's pruner).

    bench/live_search.py --space spaces/smoke.yaml --trials 8 --seed 0

Runs ``octsearch run`` (the real CLI, a trial per process) on the space twice with the same
sampler seed: once with pruning switched off (``pruner: none``), once with the space's own
pruner. It prints the replay benchmark's columns for both live studies and then replays the
unpruned study's curves through the configured pruner, trial by trial in the live order, to
show whether the replay predicts what the live pruner did. A pruned trial's full curve is read
from the unpruned study's trial with the same parameters (same seed: the random startup
trials and the enqueued ones match; later TPE trials may differ and are then scored on their
own partial curve).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import replay_pruners as rp  # noqa: E402  (a sibling script)

from search.contract import end_reason, enqueued_name, epoch_metrics, unfreeze_at_epoch
from search.space.search_space import load_space
from search.study.counting import FINISHED


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="spaces/smoke.yaml", help="search space YAML")
    parser.add_argument("--trials", type=int, default=8, help="finished trials per search")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed of both searches")
    parser.add_argument("--device", default="cpu", help="--device of octsearch run")
    parser.add_argument("--workdir", help="where studies and runs go (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error(f"--trials must be >= 1, got {args.trials}")
    return args


def run_search(space_file: Path, name: str, args: argparse.Namespace, workdir: Path) -> tuple[optuna.Study, float]:
    storage = f"sqlite:///{workdir / (name + '.db')}"
    cmd = [sys.executable, "-m", "search.cli", "run", "--space", str(space_file), "--trials", str(args.trials),
           "--seed", str(args.seed), "--device", args.device, "--storage", storage, "--study", name,
           "--runs-dir", str(workdir / "runs")]
    print(f"live_search: {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.monotonic() - t0
    return optuna.load_study(study_name=name, storage=storage), wall


def _finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state in FINISHED]


def _config(t: optuna.trial.FrozenTrial) -> rp.Config:
    """A finished trial as a recorded configuration: its stored per-epoch records."""
    stored = (epoch_metrics(t, k) for k in sorted(t.intermediate_values))
    return rp.Config(t.number, enqueued_name(t) or None, dict(t.params), unfreeze_at_epoch(t), "complete",
                     [m for m in stored if m is not None])


def _key(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True)


def as_recording(study: optuna.Study, header: dict[str, Any], path: str) -> rp.Recording:
    """A study's finished trials as a recording."""
    return rp.Recording(path, header, [_config(t) for t in _finished(study)])


def live_outcomes(study: optuna.Study, full: rp.Recording) -> list[rp.Outcome]:
    """The live trials as outcomes, each with the full curve of its unpruned twin when there is one."""
    twins = {_key(c.params): c for c in full.configs}
    out = []
    for t in _finished(study):
        c = _config(t)
        state = "pruned" if t.state == optuna.trial.TrialState.PRUNED else "complete"
        wall = sum(float(m.get("epoch_s") or 0.0) for m in c.epochs)
        out.append(rp.Outcome(twins.get(_key(c.params), c), state, len(c.epochs), wall, end_reason(t) or None))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space_path = Path(args.space)
    space = load_space(space_path)
    with tempfile.TemporaryDirectory(prefix="octsearch-live-") as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        # The canonical form holds every path absolute, so the copy in the work directory finds
        # the same files as the original.
        raw = {**space.to_dict(), "pruner": "none"}
        nop_space = workdir / "space-nop.yaml"
        nop_space.write_text(yaml.safe_dump(raw, sort_keys=False))
        nop_study, nop_wall = run_search(nop_space, "live-nop", args, workdir)
        cfg_study, cfg_wall = run_search(space_path, "live-configured", args, workdir)
        header = {"metric": space.objective.metric_key, "direction": space.objective.direction,
                  "epochs": space.base.train.epochs, "space_file": str(space_path)}
        full = as_recording(nop_study, header, "live-nop")
        ref = rp.recording_best(full)
        tol = rp.validation_tolerance(full)
        pruned = live_outcomes(cfg_study, full)
        scores = {
            "nop": [rp.score(live_outcomes(nop_study, full), full, tol)],
            "configured": [rp.score(pruned, full, tol)],
        }
        print(f"\nlive searches on {space_path}: {args.trials} trials, seed {args.seed}; "
              f"wall {nop_wall / 60:.1f} min unpruned, {cfg_wall / 60:.1f} min with the configured pruner")
        print(rp.format_table(rp.summarize(scores, tol, full.maximize)))
        predicted = rp.replay(full, space.pruner.build, list(range(len(full.configs))))
        live = {_key(o.config.params): o for o in pruned}
        print("\nreplay of the unpruned curves through the configured pruner vs the live pruned search:")
        agree = compared = 0
        for p in predicted:
            twin = live.get(_key(p.config.params))
            if twin is None:
                continue
            compared += 1
            same = (p.state, p.epochs_run) == (twin.state, twin.epochs_run)
            agree += same
            print(f"  trial {p.config.index}: replay {p.state} after {p.epochs_run} epochs, live {twin.state} after "
                  f"{twin.epochs_run} epochs{'' if same else '  <- differs'}")
        print(f"replay and live agree on {agree} of {compared} trials with the same parameters")
        print(rp.COLLAPSED_DEFINITION)
    return 0 if not math.isnan(ref) else 1


if __name__ == "__main__":
    sys.exit(main())
