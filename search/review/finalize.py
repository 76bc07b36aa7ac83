"""``octsearch finalize``: retrain the best trial and evaluate it once on the test split.

The search selected its winner on validation, so the winner's validation number is biased
upwards (the more trials, the more). The test split (``data.test_fraction``, or ``test`` rows of
a manifest) is never seen by a trial; finalize retrains the best trial's exported config — on
train + val with ``train_on_val``, for as many epochs as the trial needed to reach its best —
and evaluates the result on the test split once. Every use is recorded on the study
(:data:`search.contract.TEST_USES_ATTR`); a second use of the same test split is refused unless
forced, and a forced one stays on record: choosing among finalized models by test score would
make the test split another validation split. ``retrain=False`` (``--no-retrain``) evaluates the
trial's own kept ``best.pt`` instead: the model the search selected, no training at all.

It prints the model file, and the search's validation score, the retrained run's validation
score (not with ``train_on_val``: it trained on that split) and the test score side by side,
each with its bootstrap interval (:mod:`search.review.uncertainty`) and its volumes per class:
a test score inside the validation interval is what an unbiased selection predicts.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna

from octtrain.config import TrainConfig
from octtrain.data import split_records
from octtrain.tracking import add_to_run, json_safe
from search.contract import (
    runs_folder,
    stored_best_epoch,
    stored_overrides,
    stored_run_dir,
    stored_test_uses,
    write_test_result,
)
from search.errors import OctsearchError
from search.review.leaderboard import best_trial, class_names
from search.review.notes import per_class_lines, save_study_note
from search.review.uncertainty import Interval, balanced_accuracy_interval, trial_interval
from search.study import stored_space
from search.trial import with_wandb_identity

TEST_METRICS_FILE = "test_metrics.json"


@dataclass(frozen=True)
class FinalizeOptions:
    runs_dir: Path = Path("runs")  # the final run goes to RUNS_DIR/STUDY-ID/final[_N]
    train_on_val: bool = False
    force: bool = False  # use the test split again (recorded)
    device: str | None = None  # runtime.device of the final run (None: the trial's)
    fit_target: Any = None  # octtrain.fit, or a stand-in with its contract (tests)
    retrain: bool = True  # False: evaluate the trial's kept best.pt, train nothing


def split_identity(cfg: TrainConfig) -> dict[str, Any]:
    """What decides which volumes are the test split."""
    data = cfg.data
    return {"data": data.manifest or data.root, "val_fraction": data.val_fraction,
            "test_fraction": data.test_fraction, "split_seed": data.split_seed}


def final_config(study: optuna.Study, trial: optuna.trial.FrozenTrial,
                 options: FinalizeOptions) -> TrainConfig:
    """The trial's trainer config; on train + val at its epoch count with ``train_on_val``."""
    overrides = stored_overrides(trial)
    if options.device is not None:
        overrides["runtime.device"] = options.device
    if options.train_on_val:
        best = stored_best_epoch(trial)
        overrides.update({"data.train_on_val": True,
                          "train.epochs": best + 1 if best is not None else len(trial.intermediate_values),
                          "train.early_stopping.enabled": False})
    cfg = stored_space(study).trainer_config(overrides)
    return with_wandb_identity(cfg, study.study_name, None, trial.params)


def check_test_split(study: optuna.Study, cfg: TrainConfig, force: bool) -> None:
    """Refuse an empty test split, and a second use of the same one unless ``force``."""
    records, _ = split_records(cfg.data)
    if not records["test"]:
        raise OctsearchError(f"the test split of {cfg.data.manifest or cfg.data.root} is empty: "
                             "finalize needs data.test_fraction > 0 (or test rows in the manifest)")
    used = [u for u in stored_test_uses(study) if u.get("split") == split_identity(cfg)]
    if used and not force:
        last = used[-1]
        raise OctsearchError(
            f"the test split of study {study.study_name!r} was already used by finalize at "
            f"{last.get('at')} (trial {last.get('trial')}, balanced accuracy "
            f"{last.get('balanced_accuracy')}); evaluating again turns it into a validation "
            "split. --force runs it and records the reuse")


def _run_dir(study: optuna.Study, runs_dir: Path) -> Path:
    base = runs_dir / runs_folder(study)
    n = 1
    while (base / ("final" if n == 1 else f"final_{n}")).exists():
        n += 1
    return (base / ("final" if n == 1 else f"final_{n}")).resolve()


def finalize(study: optuna.Study, options: FinalizeOptions, *, out: TextIO | None = None) -> dict[str, Any]:
    """Retrain the best trial (or take its kept ``best.pt``), evaluate it on the test split,
    print (on ``out``, default the current ``sys.stdout``), write and store the result."""
    out = out if out is not None else sys.stdout
    from octtrain import fit
    from octtrain.train import evaluate_checkpoint

    trial = best_trial(study)
    if not options.retrain and options.train_on_val:
        raise OctsearchError("--no-retrain evaluates the trial's own best.pt, which never trained "
                             "on val: it cannot be combined with --train-on-val")
    cfg = final_config(study, trial, options)
    check_test_split(study, cfg, options.force)
    kept = None if options.retrain else kept_checkpoint(trial)
    run_dir = _run_dir(study, options.runs_dir)
    retrained_val: dict[str, Any] = {}
    if kept is None:
        what = "train + val" if options.train_on_val else "train"
        print(f"octsearch: finalize: retraining trial {trial.number} on {what} for "
              f"{cfg.train.epochs} epochs into {run_dir}", file=sys.stderr, flush=True)
        result = (options.fit_target or fit)(cfg, out_dir=run_dir)
        checkpoint = run_dir / ("last.pt" if options.train_on_val else "best.pt")
        if not options.train_on_val:
            retrained_val = next((h for h in result.history if h.get("epoch") == result.best_epoch), {})
        names = {i: n for n, i in result.class_to_idx.items()}
    else:
        print(f"octsearch: finalize: evaluating trial {trial.number}'s kept {kept} (no retraining)",
              file=sys.stderr, flush=True)
        run_dir.mkdir(parents=True)
        checkpoint, names = kept, {}
    metrics = evaluate_checkpoint(checkpoint, "test", device=options.device)
    # the kept checkpoint's run folder names its classes (class_to_idx.json), else the indices
    names = names or class_names(str(checkpoint.parent)) or {
        i: str(i) for i in range(len(metrics.get("test/confusion") or []))}
    previous = stored_test_uses(study)
    use = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "trial": trial.number, "run_dir": str(run_dir), "train_on_val": options.train_on_val,
           "retrained": kept is None,
           "split": split_identity(cfg), "balanced_accuracy": metrics["test/balanced_accuracy"],
           "reused": any(u.get("split") == split_identity(cfg) for u in previous)}
    record = {**metrics, "trial": trial.number, "run_dir": str(run_dir), "model": str(checkpoint),
              "train_on_val": options.train_on_val, "retrained": kept is None,
              "class_names": [names[i] for i in sorted(names)],
              "search/val_balanced_accuracy": trial.value,
              "retrained/val_confusion": retrained_val.get("val/confusion")}
    (run_dir / TEST_METRICS_FILE).write_text(json.dumps(json_safe(record), indent=1) + "\n")
    if kept is None:  # the final run's W&B run (<study>-final) gets the test result too
        add_to_run(run_dir, cfg.log, _wandb_summary(metrics, names))
    write_test_result(study, record, use)
    try:  # the dashboard's study note shows the test result too
        save_study_note(study)
    except Exception as err:  # noqa: BLE001 - the result is stored and printed either way
        print(f"octsearch: warning: could not update the study note: {type(err).__name__}: {err}",
              file=sys.stderr)
    out.write(format_test(study, record, use) + "\n")
    return record


def _wandb_summary(metrics: dict[str, Any], names: dict[int, str]) -> dict[str, Any]:
    """The test scalars, and per-class test accuracy and F1 under the class names."""
    out = {k: v for k, v in metrics.items() if k.startswith("test/") and isinstance(v, (int, float))}
    for key in ("per_class_accuracy", "per_class_f1"):
        for i, value in enumerate(metrics.get(f"test/{key}") or []):
            out[f"test/{key}/{names.get(i, str(i))}"] = value
    return out


def kept_checkpoint(trial: optuna.trial.FrozenTrial) -> Path:
    """The trial's own ``best.pt``, or an OctsearchError saying why it is not at hand."""
    run_dir = stored_run_dir(trial)
    path = Path(run_dir) / "best.pt" if run_dir else None
    if path is None or not path.is_file():
        where = f"{path} is not on this host or was deleted" if path else "it stored no run directory"
        raise OctsearchError(f"--no-retrain needs trial {trial.number}'s best.pt, but {where} "
                             "(checkpoint retention keeps the best trials' best.pt); run finalize "
                             "without --no-retrain to retrain it")
    return path


def comparison_lines(study: optuna.Study, record: dict[str, Any]) -> list[str]:
    """The search's validation score, the retrained run's and the test score, side by side,
    each with its bootstrap interval and volumes per class."""
    trial = study.trials[record["trial"]]
    rows: list[tuple[str, float | None, Interval | None]] = [
        ("search (validation)", record.get("search/val_balanced_accuracy"), trial_interval(trial))]
    if record.get("train_on_val"):
        rows.append(("retrained (validation)", None, None))
    elif record.get("retrained/val_confusion"):
        interval = balanced_accuracy_interval(record["retrained/val_confusion"])
        rows.append(("retrained (validation)", interval.value if interval else None, interval))
    test = balanced_accuracy_interval(record.get("test/confusion") or [])
    rows.append(("test", record.get("test/balanced_accuracy"), test))
    lines = ["| | balanced accuracy | 95% interval | volumes per class |", "|---|---|---|---|"]
    for label, value, interval in rows:
        shown = "trained on it" if label.startswith("retrained") and value is None else (
            "-" if value is None else f"{value:.4f}")
        span = f"[{interval.low:.4f}, {interval.high:.4f}]" if interval else "-"
        counts = "/".join(map(str, interval.per_class)) if interval else "-"
        lines.append(f"| {label} | {shown} | {span} | {counts} |")
    lines.append("")
    return lines


def format_test(study: optuna.Study, record: dict[str, Any], use: dict[str, Any]) -> str:
    names = dict(enumerate(record["class_names"]))
    lines = [f"study {study.study_name!r}: trial {record['trial']} on the test split "
             f"({record['test/volumes']} volumes)"
             + (" (test split used again: recorded)" if use["reused"] else ""),
             f"  balanced accuracy {record['test/balanced_accuracy']:.4f}, accuracy "
             f"{record['test/accuracy']:.4f}, macro-F1 {record['test/macro_f1']:.4f}"]
    metrics = {f"val/{k.split('/', 1)[1]}": v for k, v in record.items() if k.startswith("test/")}
    lines += ["  " + line for line in comparison_lines(study, record)]
    lines += ["  " + line for line in per_class_lines(metrics, names)]
    if record.get("model"):
        lines.append(f"  model: {record['model']}")
    lines.append(f"  written to {Path(record['run_dir']) / TEST_METRICS_FILE}")
    return "\n".join(lines)
