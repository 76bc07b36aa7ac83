"""The test split's verdict as every view shows it: the last ``octsearch finalize`` result
stored on the study (:data:`search.contract.TEST_METRICS_ATTR`), with its bootstrap interval
(:mod:`search.review.uncertainty`), next to the search's own validation score of that trial."""

from __future__ import annotations

from typing import Any

import optuna

from search.contract import TEST_METRICS_ATTR
from search.review.uncertainty import balanced_accuracy_interval


def stored_test_result(study: optuna.Study) -> dict[str, Any] | None:
    """The last test evaluation stored by finalize, or None."""
    raw = study.user_attrs.get(TEST_METRICS_ATTR)
    return raw if isinstance(raw, dict) else None


def test_result_line(study: optuna.Study) -> str | None:
    """``test split (finalize of trial 5, retrained on train): balanced accuracy 0.8333 [0.7000,
    0.9375] on 18 volumes (6/4/4/4), validation 0.8868 in the search; model PATH``, or None
    before finalize."""
    record = stored_test_result(study)
    if record is None or record.get("test/balanced_accuracy") is None:
        return None
    how = ("its kept best.pt" if record.get("retrained") is False else
           "retrained on train + val" if record.get("train_on_val") else "retrained on train")
    line = (f"test split (finalize of trial {record.get('trial')}, {how}): balanced accuracy "
            f"{record['test/balanced_accuracy']:.4f}")
    interval = balanced_accuracy_interval(record.get("test/confusion") or [])
    if interval is not None:
        line += (f" [{interval.low:.4f}, {interval.high:.4f}] on {sum(interval.per_class)} "
                 f"volumes ({'/'.join(map(str, interval.per_class))})")
    val = record.get("search/val_balanced_accuracy")
    if isinstance(val, (int, float)):
        line += f", validation {val:.4f} in the search"
    if record.get("model"):
        line += f"; model {record['model']}"
    return line
