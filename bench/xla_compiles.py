"""XLA compilations and step time per epoch of the trainer on CPU-PJRT (or a TPU).

    .venv/bin/python bench/xla_compiles.py --epochs 6 --unfreeze-at 3

Trains the tiny V-JEPA 2 classifier on a synthetic phantom set with ``runtime.device: xla``
and prints one row per epoch: whether the encoder trained, how many graphs XLA compiled in
that epoch (``xla/compiles``), the mean wall time of a training micro-batch and the epoch's
wall time. A healthy run compiles in epoch 0 (step, validation, read-out graphs) and in the
epoch that unfreezes the encoder, and nowhere else: a compile in any other epoch is a graph
that depends on a value or a shape that changed, and on a TPU it costs seconds to minutes.

``PJRT_DEVICE`` defaults to CPU (set it to TPU on a TPU VM). Step times on CPU-PJRT measure
the CPU, not a TPU: compare compile counts, and times only between runs on one machine.
XLA runs graphs asynchronously, so the per-micro-batch time is the training phase's wall time
(tracing, transfer and execution overlapped) divided by its micro-batches.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--unfreeze-at", type=int, default=3,
                        help="epoch (0-based) from which the encoder trains; -1: never")
    parser.add_argument("--volumes", type=int, default=48, help="synthetic volumes in all")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=32, help="B-scan height = width (pixels)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--xla-cache-dir",
                        help="persistent XLA compile cache (runtime.xla_cache_dir)")
    parser.add_argument("--work-dir", help="where data, cache and run go (default: a temp dir)")
    return parser


def run(args: argparse.Namespace, work: Path) -> tuple[list[dict[str, Any]], int, float]:
    """Train once; return the epoch metrics, the micro-batches per epoch and the wall time."""
    from octtrain.config.train_config import config_from_dict
    from octtrain.data.dataset import build_datasets
    from octtrain.synthetic.writer import make_synthetic
    from octtrain.train.loop import fit

    manifest = make_synthetic(work / "data", n_volumes=args.volumes, frames=args.frames,
                              height=args.size, width=args.size,
                              class_shares=(0.25, 0.25, 0.25, 0.25), volumes_per_patient=1,
                              seed=0)
    cfg = config_from_dict({
        "data": {"manifest": str(manifest), "frames": args.frames, "height": args.size,
                 "width": args.size, "cache_dir": str(work / "volume-cache"),
                 "val_fraction": 0.25, "test_fraction": 0.0},
        "model": {"encoder": "tiny", "unfreeze_at_epoch": args.unfreeze_at},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size,
                  "grad_accum_steps": args.grad_accum, "warmup_epochs": 1,
                  "lr_encoder": 1e-4, "label_smoothing": 0.05,
                  "early_stopping": {"enabled": False}},
        "runtime": {"device": "xla", "xla_cache_dir": args.xla_cache_dir},
    })
    n_train = len(build_datasets(cfg.data).train)
    micro = n_train // args.batch_size // args.grad_accum * args.grad_accum
    start = time.monotonic()
    result = fit(cfg, out_dir=work / "run", progress=False)
    return result.history, micro, time.monotonic() - start


def table(history: list[dict[str, Any]], micro: int) -> str:
    rows = [f"{'epoch':>5} | {'encoder trainable':>17} | {'xla compiles':>12} | "
            f"{'step ms (mean)':>14} | {'epoch s':>7}"]
    rows.append("-" * len(rows[0]))
    for m in history:
        step_ms = 1000 * (m["io/load_s"] + m["train/compute_s"]) / max(micro, 1)
        rows.append(f"{m['epoch']:>5} | {str(m['encoder_trainable']):>17} | "
                    f"{m.get('xla/compiles', 'n/a'):>12} | {step_ms:>14.1f} | {m['epoch_s']:>7.2f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("PJRT_DEVICE", "CPU")  # before anything initialises torch_xla
    with tempfile.TemporaryDirectory(prefix="xla-compiles-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        history, micro, wall = run(args, work)
    print(f"PJRT_DEVICE={os.environ['PJRT_DEVICE']}  {args.volumes} volumes of "
          f"{args.frames}x{args.size}x{args.size}, batch {args.batch_size}, "
          f"accumulation {args.grad_accum}, {micro} micro-batches per epoch, "
          f"encoder unfrozen at epoch {args.unfreeze_at}")
    print(table(history, micro))
    print(f"total: {sum(m.get('xla/compiles', 0) for m in history)} compilations, {wall:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
