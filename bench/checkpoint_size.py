"""Bytes of a run's best.pt / last.pt with the ``tiny`` encoder, frozen and trained.

    PYTHONPATH=$PWD .venv/bin/python bench/checkpoint_size.py

One epoch on a small phantom set (16 x 32 x 32 volumes), CPU; prints one table row per case.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from octtrain import fit
from octtrain.config.train_config import config_from_dict
from octtrain.synthetic.writer import make_synthetic


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_synthetic(Path(tmp) / "data", n_volumes=40, volumes_per_patient=1,
                                  frames=16, height=32, width=32,
                                  class_shares=(0.25, 0.25, 0.25, 0.25), seed=11)
        print("| encoder | best.pt bytes | last.pt bytes |\n|---|---:|---:|")
        for frozen in (True, False):
            cfg = config_from_dict({
                "data": {"manifest": str(manifest), "frames": 16, "height": 32, "width": 32,
                         "cache_dir": f"{tmp}/cache", "val_fraction": 0.2, "test_fraction": 0.0},
                "model": {"encoder": "tiny", "freeze_encoder": frozen},
                "train": {"epochs": 1, "batch_size": 4, "warmup_epochs": 0,
                          "early_stopping": {"enabled": False}},
                "runtime": {"device": "cpu"},
            })
            out = fit(cfg, out_dir=Path(tmp) / f"run-{frozen}", progress=False).out_dir
            sizes = [(out / name).stat().st_size for name in ("best.pt", "last.pt")]
            print(f"| tiny, {'frozen' if frozen else 'trained'} | {sizes[0]:,} | {sizes[1]:,} |")


if __name__ == "__main__":
    main()
