"""Where a run's metrics go: ``metrics.jsonl`` in the run directory, and W&B when enabled.

Train metrics are written as soon as the training epoch ends and *before* validation:
if validation hangs or dies, the dashboard still shows the epoch that was trained.
Only the master rank tracks; other ranks get a tracker that drops everything.

The config sent to W&B goes through :func:`redact_secrets`: a trainer config holds no storage
URL (a search passes it to its trial processes in the environment, which W&B does not
record), and any URL with a password that a config could hold is sent with ``***`` instead.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from octtrain.config import LogSection
from octtrain.errors import HostError, host_errors
from octtrain.tracking.wandb_run import WandbRun


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` (recursively): strict JSON that every tool,
    storage and UI reads."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]+@")  # scheme://user:PASSWORD@host


def redact_secrets(value: Any) -> Any:
    """``value`` with the password of every URL in its strings replaced by ``***``
    (recursively), e.g. ``postgresql://u:***@host/db``."""
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1***@", value)
    if isinstance(value, Mapping):
        return {k: redact_secrets(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(v) for v in value]
    return value
# why the loop stopped early (octtrain.train.loop) → the W&B run's state; on_epoch_end stops a run
# when a search prunes it
STOPPED = {"callback": "pruned", "early_stopping": "early_stopped"}
METRICS = "the metrics"  # what a HostError says was being written


def run_state(error: Exception) -> str:
    """The W&B state of a run that ``error`` ended: a search's callback prunes a trial by
    raising Optuna's ``TrialPruned`` (named, not imported: octtrain does not import optuna)."""
    name = type(error).__name__
    return "pruned" if name == "TrialPruned" else f"failed: {name}"


class Tracker:
    def __init__(self, out_dir: Path, cfg: LogSection, run_config: dict[str, Any], enabled: bool = True,
                 class_to_idx: Mapping[str, int] | None = None):
        self.enabled = enabled
        self.path = out_dir / "metrics.jsonl"
        self._wandb: WandbRun | None = None
        if not enabled:
            return
        # "w": a run directory describes one run; re-running into it must not mix two histories.
        with host_errors(METRICS, self.path):
            self._file = self.path.open("w", encoding="utf-8")
        if cfg.wandb and cfg.wandb_mode != "disabled":
            names = sorted(class_to_idx or {}, key=(class_to_idx or {}).__getitem__)
            self._wandb = WandbRun(cfg, out_dir, redact_secrets(run_config), names)

    def _write(self, record: dict[str, Any]) -> None:
        line = json.dumps(json_safe(record)) + "\n"
        with host_errors(METRICS, self.path):
            self._file.write(line)
            self._file.flush()

    def log_train(self, epoch: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._write({"phase": "train", "epoch": epoch, **metrics})
        if self._wandb is not None:
            self._wandb.log_train(epoch, metrics)

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._write({"phase": "epoch", **metrics})
        if self._wandb is not None:
            self._wandb.log_epoch(epoch, metrics)

    def close(self, stopped: str | None = None) -> None:
        """``stopped``: why the loop ended early (None: it ran out, or an exception is
        propagating: then the run ``failed``)."""
        if not self.enabled:
            return
        error = sys.exc_info()[1]
        if self._wandb is not None:
            state = (run_state(error) if isinstance(error, Exception)
                     else STOPPED.get(stopped or "", stopped or "finished"))
            self._wandb.finish(state, str(error) if state == "pruned" else None)
            self._wandb = None
        try:
            with host_errors(METRICS, self.path):
                self._file.close()  # flushes what a failed write left in the buffer, or fails again
        except HostError:
            if error is None:
                raise
            # else the run already failed (a full disk, most likely this one): that is the error
            # to report, not its echo raised while handling it


def read_metrics(path: str | Path, phase: str = "epoch") -> list[dict[str, Any]]:
    """The records of one phase from a run's ``metrics.jsonl`` (None stands for NaN)."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("phase") == phase:
                out.append(rec)
    return out
