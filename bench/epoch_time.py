"""Trainer throughput per epoch on this machine (CPU by default): frozen vs unfrozen encoder,
mean vs attentive pooling, a few batch sizes. Prints a table; numbers, not assertions.

    .venv/bin/python bench/epoch_time.py                      # 720 phantoms, tiny encoder, CPU
    .venv/bin/python bench/epoch_time.py --volumes 240 --batch-sizes 1 8 --device cuda

Each row is one ``fit`` of 2 epochs with the encoder unfrozen at epoch 1, so epoch 0 is the
frozen warm-up and epoch 1 trains the encoder. Epoch 0 of the first row also fills the
preprocessing cache; that row is repeated so every reported row reads from the cache.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from octtrain.config.train_config import config_from_dict
from octtrain.synthetic.writer import make_synthetic
from octtrain.train.loop import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=720)
    parser.add_argument("--size", type=int, default=64, help="B-scan height = width")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--pools", nargs="+", default=["mean", "attentive"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.monotonic()
        manifest = make_synthetic(Path(tmp) / "data", n_volumes=args.volumes, frames=args.frames,
                                  height=args.size, width=args.size, seed=0)
        print(f"{args.volumes} phantoms of {args.frames}x{args.size}x{args.size} written in "
              f"{time.monotonic() - t0:.1f} s; device {args.device}")

        def run(pool: str, batch: int, name: str) -> list[dict[str, Any]]:
            cfg = config_from_dict({
                "data": {"manifest": str(manifest), "frames": args.frames, "height": args.size,
                         "width": args.size, "cache_dir": str(Path(tmp) / "cache"), "num_workers": args.workers},
                "model": {"pool_method": pool, "unfreeze_at_epoch": 1, "head": {"hidden": 256, "dropout": 0.2}},
                "train": {"epochs": 2, "batch_size": batch, "warmup_epochs": 0,
                          "early_stopping": {"enabled": False}},
                "runtime": {"device": args.device},
            })
            return fit(cfg, out_dir=Path(tmp) / name, progress=False).history

        run(args.pools[0], args.batch_sizes[0], "warm-cache")
        header = (f"{'pool':<10} {'batch':>5} {'encoder':>8} {'epoch s':>8} {'train vol/s':>11} "
                  f"{'io s':>6} {'compute s':>9}")
        print(header)
        print("-" * len(header))
        for pool in args.pools:
            for batch in args.batch_sizes:
                for m in run(pool, batch, f"{pool}-{batch}"):
                    train_s = m["io/load_s"] + m["train/compute_s"]
                    print(f"{pool:<10} {batch:>5} {'trains' if m['encoder_trainable'] else 'frozen':>8} "
                          f"{m['epoch_s']:>8.2f} {m['train/count'] / train_s:>11.1f} "
                          f"{m['io/load_s']:>6.2f} {m['train/compute_s']:>9.2f}")


if __name__ == "__main__":
    main()
