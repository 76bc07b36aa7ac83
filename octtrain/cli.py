"""``octtrain``: train a classifier from a YAML config, prepare its data set, index a folder of
volumes into a manifest, or write a synthetic OCT dataset.

The command line is the edge: options become a config (``--set``) or ``make_synthetic``
arguments here, and errors the user can cause are printed as one line (``--debug``: traceback).
Exit status: 0 done, 2 an error the user can cause, 1 any other failure: the host's (HostError:
a full disk, a read-only file system, ...; one line, the same command may succeed on another
host or later) or a bug (a traceback), 128 + N stopped by signal N (SIGTERM 143: a resume
checkpoint was written; SIGINT 130).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from octtrain.errors import DataError, HostError, OcttrainError, RunExistsError, host_errors, one_line
from octtrain.runtime import Preempted

if TYPE_CHECKING:
    from octtrain.synthetic import LesionParams

# make-synthetic options: (flag, make_synthetic argument, type, help). An option left out keeps
# make_synthetic's own default, so each default has one source.
_SYNTHETIC_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    ("--n-volumes", "n_volumes", int, "volumes in all"),
    ("--frames", "frames", int, "B-scans per volume"),
    ("--height", "height", int, "rows per B-scan"),
    ("--width", "width", int, "columns per B-scan"),
    ("--class-shares", "class_shares", str, "comma-separated shares of the classes"),
    ("--volumes-per-patient", "volumes_per_patient", int, "volumes of one patient"),
    ("--difficulty", "difficulty", float, "lesion sizes are divided by this (1: DESIGN.md's setting)"),
    ("--noise", "noise", float, "speckle coefficient of variation"),
    ("--anatomy-variation", "anatomy_variation", float,
     "scale of the patient-to-patient anatomy ranges (0: all alike)"),
    ("--seed", "seed", int, "the data set is a function of its options and this seed"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="octtrain", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune a V-JEPA 2 classifier on OCT volumes")
    train.add_argument("--config", required=True, help="trainer YAML (sections model, train, data, ...)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.lr_head=0.003 (repeatable)")
    train.add_argument("--out", help="run directory (default: runs/<timestamp>); one that "
                       "already holds a run is refused unless --overwrite or --resume")
    again = train.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out (its files are deleted first)")
    again.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its resume checkpoint (resume.pt, "
                            "written when a run is stopped by SIGTERM)")
    train.add_argument("--device", choices=["auto", "xla", "cuda", "cpu"],
                       help="shortcut for --set runtime.device=...")
    train.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")

    prepare = sub.add_parser("prepare", help="build the consolidated, memory-mapped data set of a "
                             "config (once per host; trials then map it)")
    prepare.add_argument("--config", required=True, help="trainer YAML (its data section)")
    prepare.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value, e.g. --set data.store=uint8 (repeatable)")

    index = sub.add_parser("index", help="write a manifest for a folder of volumes (any readable "
                           "format) and a label sheet")
    index.add_argument("--root", required=True, help="folder searched for volumes, recursively")
    index.add_argument("--labels", metavar="SHEET", help="label sheet, .csv or .xlsx (default: the "
                       "first folder under --root is the class)")
    index.add_argument("--key-column", help="sheet column naming the volumes: a path relative to "
                       "--root, a file name or a name without suffix (default: the first of path, "
                       "volume, file, name, id)")
    index.add_argument("--label-column", default="label", help="sheet column of the class (default: label)")
    index.add_argument("--out", required=True, help="the manifest CSV to write")
    index.add_argument("--allow-unlabelled", action="store_true",
                       help="write the manifest although some volumes have no label (left out)")

    synth = sub.add_parser("make-synthetic", help="write a labelled synthetic OCT dataset + manifest")
    _add_synthetic_arguments(synth)
    return parser


def _add_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    from octtrain.synthetic import FORMATS, make_synthetic

    defaults = {k: p.default for k, p in inspect.signature(make_synthetic).parameters.items()}
    parser.add_argument("--out", required=True, help="output directory (new, empty, or an "
                        "earlier synthetic set, which is replaced)")
    for flag, name, kind, text in _SYNTHETIC_OPTIONS:
        default = defaults[name]
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(flag, dest=name, type=kind, help=f"{text} (default: {shown})")
    parser.add_argument("--format", dest="fmt", choices=FORMATS,
                        help=f"file format of the volumes (default: {defaults['fmt']})")
    parser.add_argument("--lesion", action="append", default=[], metavar="NAME=VALUE",
                        help="override a LesionParams field, e.g. drusen_height=4 (repeatable)")


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
    from octtrain.runtime import stop_on_signals
    from octtrain.train import RESUME_FILE, default_run_dir, fit

    overrides = parse_overrides(args.overrides)
    if args.device:
        overrides["runtime.device"] = args.device
    cfg = load_config(args.config, overrides)
    out = Path(args.out) if args.out is not None else default_run_dir()
    resume = out / RESUME_FILE
    if args.resume and not resume.is_file():
        raise RunExistsError(f"--resume: {str(out)!r} holds no resume checkpoint ({RESUME_FILE}, "
                             "written when a run is stopped by SIGTERM)")
    if not args.resume:
        _clear_run_dir(out, overwrite=args.overwrite)
    with stop_on_signals():  # SIGTERM: a resume checkpoint at the next step, then exit 143
        result = fit(cfg, out_dir=out, progress=not args.quiet,
                     resume_from=resume if args.resume else None, preempt_to=resume)
    print(f"run directory: {result.out_dir}")
    if result.best_epoch < 0:
        print(f"no epoch gave a finite validation {result.metric}")
        return 0
    best = result.history[result.best_epoch]
    print(f"best epoch {result.best_epoch + 1} of {result.epochs_run}: "
          f"val {result.metric} {result.best_value:.4f} (checkpoint {result.out_dir / 'best.pt'})")
    print(format_class_table(best, result.class_to_idx))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    import time

    from octtrain.config import load_config, parse_overrides
    from octtrain.data import build_datasets

    cfg = load_config(args.config, parse_overrides(args.overrides))
    start = time.monotonic()
    splits = build_datasets(cfg.data)
    store = splits.train.cache
    directory = getattr(store, "directory", None)
    size = sum(f.stat().st_size for f in directory.iterdir()) if directory else 0
    volumes = len(splits.train) + len(splits.val) + len(splits.test)
    print(f"{volumes} volumes of {cfg.data.frames} x {cfg.data.height} x {cfg.data.width} "
          f"({cfg.data.store}, {size / 2**20:.1f} MiB) in {directory} "
          f"({time.monotonic() - start:.1f} s)")
    return 0


def _clear_run_dir(out: Path, *, overwrite: bool) -> None:
    """Refuse a directory that holds a run (RunExistsError); with ``overwrite``, delete its
    run files, so the new run's files never mix with the old one's."""
    from octtrain.train import RESUME_FILE, run_files_in

    found = run_files_in(out)
    if found and not overwrite:
        resume = ", --resume to continue it" if RESUME_FILE in found else ""
        raise RunExistsError(f"--out {str(out)!r} already holds a run ({', '.join(found)}): "
                             f"pass --overwrite to replace it{resume}, or choose another --out")
    with host_errors("the run directory", out):
        for name in found:
            (out / name).unlink()


def _index(args: argparse.Namespace) -> int:
    from octtrain.data import build_index, write_index

    report = build_index(args.root, args.labels, key_column=args.key_column,
                         label_column=args.label_column)
    print("\n".join(report.summary()))
    print(f"wrote {write_index(report, args.out, allow_unlabelled=args.allow_unlabelled)}")
    return 0


def _make_synthetic(args: argparse.Namespace) -> int:
    from octtrain.synthetic import make_synthetic

    given = {name: getattr(args, name) for _, name, _, _ in _SYNTHETIC_OPTIONS
             if getattr(args, name) is not None}
    if "class_shares" in given:
        given["class_shares"] = _parse_shares(given["class_shares"])
    if args.fmt is not None:
        given["fmt"] = args.fmt
    manifest = make_synthetic(args.out, lesions=_parse_lesions(args.lesion), **given)
    print(f"wrote {manifest}")
    return 0


def _parse_shares(text: str) -> tuple[float, ...]:
    """``"0.7,0.1,0.1,0.1"`` → floats; a DataError quoting the text when it does not parse."""
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise DataError(f"--class-shares must be comma-separated numbers, got {text!r}") from None


def _parse_lesions(items: Sequence[str]) -> LesionParams:
    """``["drusen_height=4", "drusen_count=1,2"]`` → LesionParams with those fields replaced."""
    from octtrain.synthetic import LesionParams

    fields = {f.name: f for f in dataclasses.fields(LesionParams)}
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in fields:
            raise DataError(f"--lesion must be NAME=VALUE with NAME one of "
                            f"{', '.join(fields)}, got {item!r}")
        try:
            if key.endswith("_count"):
                lo, hi = (int(p) for p in text.split(","))
                changes[key] = (lo, hi)
            else:
                changes[key] = float(text)
        except ValueError:
            raise DataError(f"--lesion {key}: bad value {text!r}") from None
    return LesionParams(**changes)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "prepare":
            return _prepare(args)
        if args.command == "index":
            return _index(args)
        return _make_synthetic(args)
    except Preempted as err:  # a signal's exit status, 128 + N (SIGTERM: 143)
        print(f"octtrain: {err}; continue with the same command and --resume", file=sys.stderr)
        return 128 + err.signum
    except OcttrainError as err:
        if args.debug:
            raise
        print(f"octtrain: error: {one_line(err)}", file=sys.stderr)
        return 1 if isinstance(err, HostError) else 2  # the host failed it, not the user
    except KeyboardInterrupt:
        print("octtrain: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `octtrain ... | head`: the reader left; no traceback
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
