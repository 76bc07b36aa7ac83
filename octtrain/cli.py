"""``octtrain``: train a classifier from a YAML config, or write a synthetic OCT dataset."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

from octtrain.errors import OcttrainError, one_line


def _parser() -> argparse.ArgumentParser:
    from octtrain import synthetic

    parser = argparse.ArgumentParser(prog="octtrain", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune a V-JEPA 2 classifier on OCT volumes")
    train.add_argument("--config", required=True, help="trainer YAML (sections model, train, data, ...)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.lr_head=0.003 (repeatable)")
    train.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    train.add_argument("--device", choices=["auto", "xla", "cuda", "cpu"],
                       help="shortcut for --set runtime.device=...")
    train.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")

    synth = sub.add_parser("make-synthetic", help="write a labelled synthetic OCT dataset + manifest")
    synthetic.add_arguments(synth)
    return parser


def format_class_table(metrics: dict[str, Any], class_to_idx: dict[str, int]) -> str:
    """Per-class table of one epoch's validation metrics."""
    names = sorted(class_to_idx, key=class_to_idx.__getitem__)
    cm = metrics["val/confusion"]
    rows = [f"{'class':<16} {'support':>7} {'predicted':>9} {'accuracy':>8} {'F1':>6}"]
    for i, name in enumerate(names):
        acc = metrics["val/per_class_accuracy"][i]
        acc_s = "   n/a" if acc is None or (isinstance(acc, float) and math.isnan(acc)) else f"{acc:8.3f}"
        rows.append(f"{name:<16} {sum(cm[i]):>7} {metrics['val/pred_hist'][i]:>9} {acc_s:>8} "
                    f"{metrics['val/per_class_f1'][i]:6.3f}")
    rows.append(f"balanced accuracy {metrics['val/balanced_accuracy']:.3f}   "
                f"macro-F1 {metrics['val/macro_f1']:.3f}   accuracy {metrics['val/accuracy']:.3f}")
    return "\n".join(rows)


def _train(args: argparse.Namespace) -> int:
    from octtrain.config import load_config, parse_overrides
    from octtrain.loop import fit

    overrides = parse_overrides(args.overrides)
    if args.device:
        overrides["runtime.device"] = args.device
    cfg = load_config(args.config, overrides)
    result = fit(cfg, out_dir=args.out, progress=not args.quiet)
    print(f"run directory: {result.out_dir}")
    if result.best_epoch < 0:
        print(f"no epoch gave a finite validation {result.metric}")
        return 0
    best = result.history[result.best_epoch]
    print(f"best epoch {result.best_epoch + 1} of {result.epochs_run}: "
          f"val {result.metric} {result.best_value:.4f} (checkpoint {result.out_dir / 'best.pt'})")
    print(format_class_table(best, result.class_to_idx))
    return 0


def _make_synthetic(args: argparse.Namespace) -> int:
    from octtrain import synthetic

    manifest = synthetic.run_from_args(args)
    print(f"wrote {manifest}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        return _make_synthetic(args)
    except OcttrainError as err:
        if args.debug:
            raise
        print(f"octtrain: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("octtrain: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `octtrain ... | head`: the reader left; no traceback
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
