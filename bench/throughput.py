"""Trainer throughput and startup cost on this machine: frozen and trained encoder, fp32 and
bf16, cold and warm dataset cache. Prints a table; numbers, not assertions.

    .venv/bin/python bench/throughput.py                     # the smoke config: tiny, 720 x 16x64x64
    .venv/bin/python bench/throughput.py --encoder vitl-random --volumes 24 --frames 4 --size 32 \\
        --batch 2 --epochs 2 --no-augment                    # ViT-L at a CPU-feasible size

Each row is one trial as a search runs it: a fresh ``octtrain train`` process on the config
``configs/scenario_a_fixed.yaml`` (the smoke search's base) with the encoder, sizes and epochs
given here, the encoder frozen (never unfrozen) or trained from epoch 0. "cold" starts with an
empty ``data.cache_dir`` (the trial builds the consolidated data set), "warm" reuses the cold
row's (it maps the data set).

Columns: ``step s`` (train time of the last epoch per micro-batch: loading + compute),
``stall`` (the share of that time the loop waited for a batch: ``io/stall_share``), ``vol/s``
(training volumes per second of the last epoch), ``peak MiB`` (the trial process's peak
resident memory on CPU; peak allocated device memory on CUDA), ``startup s`` (process start to
the first optimizer step, ``startup/total_s``) and its parts (``imp s``: process start to
``fit``; ``data s``; ``model s``; ``step1 s``: to the end of the first step), ``trial s`` (wall
time of the whole trial process) and ``start %`` (startup as a share of the trial).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BASE = REPO / "configs" / "scenario_a_fixed.yaml"

# The trial process: the real CLI, then its peak memory on the last line.
CHILD = """
import resource, sys
from octtrain.cli import main
rc = main(sys.argv[1:])
import torch
device = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
print("PEAK", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, device)
sys.exit(rc)
"""


def trial_config(args: argparse.Namespace, manifest: Path, cache: Path, state: str,
                 precision: str) -> dict[str, Any]:
    cfg: dict[str, Any] = yaml.safe_load(BASE.read_text())
    cfg["data"].update(manifest=str(manifest), cache_dir=str(cache), frames=args.frames,
                       height=args.size, width=args.size)
    if not args.augment:
        cfg["data"]["augment"] = {"flip": False, "rotation_deg": 0, "intensity_jitter": False}
    cfg["model"].update(encoder=args.encoder, freeze_encoder=state == "frozen", unfreeze_at_epoch=-1)
    cfg["train"].update(epochs=args.epochs, batch_size=args.batch, grad_accum_steps=1,
                        early_stopping={"enabled": False})
    cfg["runtime"] = {"device": args.device, "precision": precision}
    return cfg


def run_trial(cfg: dict[str, Any], work: Path, name: str) -> dict[str, Any]:
    """One trial process; its last epoch's and first epoch's metrics, peak memory, wall time."""
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump(cfg))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CHILD, "train", "--config", str(config),
                           "--out", str(work / name), "--quiet"],
                          cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-3000:]}")
    rss, device = (int(v) for v in proc.stdout.strip().splitlines()[-1].split()[1:])
    epochs = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    epochs = [e for e in epochs if "val/loss" in e]  # whole epochs (not the train-only records)
    return {"first": epochs[0], "last": epochs[-1], "peak": device or rss, "wall": wall}


def row(state: str, precision: str, cache: str, r: dict[str, Any]) -> str:
    last, first = r["last"], r["first"]
    train_s = last["io/load_s"] + last["train/compute_s"]
    steps = max(1, last["train/count"] // r["batch"])
    startup = first["startup/total_s"]
    return (f"{state:<8} {precision:<5} {cache:<5} {train_s / steps:>7.3f} "
            f"{last['io/stall_share']:>6.1%} {last['train/count'] / train_s:>7.1f} "
            f"{r['peak'] / 2**20:>8.0f} {startup:>9.1f} {first.get('startup/imports_s', 0):>5.1f} "
            f"{first['startup/data_s']:>6.2f} {first['startup/model_s']:>7.2f} "
            f"{first['startup/first_step_s']:>6.2f} "
            f"{r['wall']:>7.1f} {startup / r['wall']:>7.1%}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="tiny")
    parser.add_argument("--volumes", type=int, default=720)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=64, help="B-scan height = width")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=8, help="per trial (the smoke search's 8)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--states", nargs="+", default=["frozen", "trained"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--caches", nargs="+", default=["cold", "warm"],
                        help="cold: the trial builds the data set; warm: it maps the cold one's")
    args = parser.parse_args(argv)

    from octtrain.synthetic.writer import make_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = make_synthetic(work / "data", n_volumes=args.volumes, frames=args.frames,
                                  height=args.size, width=args.size, seed=0)
        print(f"{args.encoder} encoder, {args.volumes} phantoms of {args.frames}x{args.size}x"
              f"{args.size}, batch {args.batch}, {args.epochs} epochs, device {args.device}, "
              f"augmentation {'on' if args.augment else 'off'}")
        header = (f"{'encoder':<8} {'prec':<5} {'cache':<5} {'step s':>7} {'stall':>6} "
                  f"{'vol/s':>7} {'peak MiB':>8} {'startup s':>9} {'imp s':>5} {'data s':>6} "
                  f"{'model s':>7} {'step1 s':>6} "
                  f"{'trial s':>7} {'start %':>7}")
        print(header)
        print("-" * len(header), flush=True)
        for state in args.states:
            for precision in args.precisions:
                cache = work / f"cache-{state}-{precision}"
                for temperature in args.caches:
                    cfg = trial_config(args, manifest, cache, state, precision)
                    result = run_trial(cfg, work, f"{state}-{precision}-{temperature}")
                    print(row(state, precision, temperature, {**result, "batch": args.batch}),
                          flush=True)


if __name__ == "__main__":
    main()
