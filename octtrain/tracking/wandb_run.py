"""One W&B run of a training (``log.wandb``), on the master rank only.

Named ``log.wandb_name`` (default: the run directory's name) in group ``log.wandb_group``; its
config is the resolved trainer config plus ``params``: the values of the dotted keys listed in
``log.wandb_params`` (a search lists its sampled parameters there, so W&B can compare trials by
them), and ``log.wandb_config``'s entries (a search: ``study``, ``study_id``, ``trial``); its tags
are ``log.wandb_tags`` plus, at the end, how it ended. Each epoch logs the train metrics (before
validation) and the validation scalars, per-class accuracy and F1 under the class names; the
summary keeps the best value of each score (``max``; ``min`` for a loss) as well as the last. At
the end the summary holds how the run ended (``state``, and ``prune_reason`` when a search
pruned it), the best epoch's validation scalars and per-class metrics (``best/...``), and its
confusion matrix as a table.

W&B is a spectator: any error it raises (no network in ``online`` mode, a full disk) is one
warning on stderr, and the run goes on without W&B.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from octtrain.config import LogSection
from octtrain.errors import clip


def dotted_value(config: Mapping[str, Any], path: str) -> Any:
    """``config["train"]["lr_head"]`` for ``"train.lr_head"``; None where a part is missing."""
    value: Any = config
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


# validation scalars whose best value W&B's summary keeps beside the last: the higher the better,
# except a loss
BEST_IS_MAX = ("val/balanced_accuracy", "val/accuracy", "val/macro_f1")
BEST_IS_MIN = ("val/loss",)


def per_class(metrics: Mapping[str, Any], names: Sequence[str], prefix: str = "val") -> dict[str, Any]:
    """``val/per_class_accuracy/<name>`` and ``val/per_class_f1/<name>`` of one epoch."""
    out = {}
    for key in ("per_class_accuracy", "per_class_f1"):
        for i, value in enumerate(metrics.get(f"{prefix}/{key}") or []):
            name = names[i] if i < len(names) else str(i)
            out[f"{prefix}/{key}/{name}"] = value
    return out


def _warn(what: str, err: BaseException) -> None:
    """W&B failed: one warning line, and the run goes on without it."""
    print(f"octtrain: warning: W&B: cannot {what} the run, going on without it: "
          f"{clip(f'{type(err).__name__}: {err}')}", file=sys.stderr, flush=True)


class WandbRun:
    def __init__(self, cfg: LogSection, out_dir: Path, run_config: Mapping[str, Any],
                 class_names: Sequence[str]) -> None:
        self.names = list(class_names)
        self._best: Mapping[str, Any] | None = None
        self._run: Any = None
        config = dict(run_config)
        if cfg.wandb_params:
            config["params"] = {p: dotted_value(run_config, p) for p in cfg.wandb_params}
        config["classes"] = self.names
        config.update(cfg.wandb_config)
        try:
            import wandb  # optional dependency: pip install 'octsearch[wandb]'

            self._run = wandb.init(
                project=cfg.wandb_project, mode=cfg.wandb_mode,  # type: ignore[arg-type]
                dir=str(out_dir), config=config, name=cfg.wandb_name or out_dir.name,
                group=cfg.wandb_group, tags=list(cfg.wandb_tags), reinit="finish_previous",
                settings=wandb.Settings(silent=True, console="off"),
            )
            for key in BEST_IS_MAX:
                self._run.define_metric(key, summary="max,last")
            for key in BEST_IS_MIN:
                self._run.define_metric(key, summary="min,last")
        except Exception as err:  # noqa: BLE001 - W&B must never stop a training
            self._failed("start", err)

    def _failed(self, what: str, err: BaseException) -> None:
        _warn(what, err)
        self._run = None

    def log(self, record: Mapping[str, Any], epoch: int) -> None:
        if self._run is None:
            return
        try:
            self._run.log(dict(record), step=epoch)
        except Exception as err:  # noqa: BLE001
            self._failed("log to", err)

    def log_train(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        self.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, epoch)

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in metrics.items()
                   if k.startswith("val/") and isinstance(v, (int, float))}
        self.log({**scalars, **per_class(metrics, self.names)}, epoch)
        if metrics.get("best/epoch") == epoch:
            self._best = metrics

    def finish(self, state: str, reason: str | None = None) -> None:
        """Summary (``state``, the prune ``reason`` if any, the best epoch's validation scalars,
        per-class metrics and confusion table) and ``state`` as a tag, then finish."""
        if self._run is None:
            return
        try:
            import wandb

            summary: dict[str, Any] = {"state": state}
            if reason is not None:
                summary["prune_reason"] = reason
            self._run.tags = (*self._run.tags, state.split(":")[0])
            if self._best is not None:
                summary["best/epoch"] = self._best.get("epoch")
                summary.update({f"best/{k}": v for k, v in self._best.items()
                                if k.startswith("val/") and isinstance(v, (int, float))})
                summary.update({f"best/{k}": v for k, v in per_class(self._best, self.names).items()})
                confusion = self._best.get("val/confusion") or []
                labels = self.names + [str(i) for i in range(len(self.names), len(confusion))]
                summary["best/confusion"] = wandb.Table(
                    columns=["true \\ predicted", *labels[:len(confusion)]],
                    data=[[labels[i], *row] for i, row in enumerate(confusion)])
            self._run.summary.update(summary)
            self._run.finish()
        except Exception as err:  # noqa: BLE001
            self._failed("finish", err)
        self._run = None


def add_to_run(out_dir: Path, cfg: LogSection, summary: Mapping[str, Any]) -> None:
    """Add ``summary`` to the W&B run that the training in ``out_dir`` wrote (e.g. a test
    evaluation made after it finished): W&B resumes the run by its id, which offline writes a
    second ``offline-run-*`` folder of the same id that ``wandb sync`` puts into the same run.
    Nothing to do without such a run; a W&B error is one warning."""
    ids = sorted({p.name.rsplit("-", 1)[-1] for p in (out_dir / "wandb").glob("*run-*")
                  if p.is_dir() and not p.is_symlink()})
    if not cfg.wandb or cfg.wandb_mode == "disabled" or len(ids) != 1:
        return
    try:
        import wandb

        run = wandb.init(project=cfg.wandb_project, mode=cfg.wandb_mode,  # type: ignore[arg-type]
                         dir=str(out_dir), id=ids[0], resume="allow", name=cfg.wandb_name or out_dir.name,
                         group=cfg.wandb_group, settings=wandb.Settings(silent=True, console="off"))
        run.summary.update(dict(summary))
        run.finish()
    except Exception as err:  # noqa: BLE001 - W&B must never fail what it watches
        _warn("add to", err)


def read_offline_run(path: str | Path) -> dict[str, Any]:
    """What an offline run's ``run-*.wandb`` file holds, without ``wandb sync``: ``name``,
    ``group``, ``tags``, ``config`` (top-level keys), ``history`` (every logged key: last value) and
    ``summary`` (key: value; tables as their stored reference).

    The file is W&B's log of protobuf records (a 7-byte header, then 32 KiB blocks of chunks
    with a 7-byte header each: CRC, length, type 1 full / 2 first / 3 middle / 4 last).
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    out: dict[str, Any] = {"config": {}, "history": {}, "summary": {}}
    pos, chunk, block = 7, b"", 32768
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if pos + 7 + length > len(data):  # a chunk still being written
            break
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):
            if kind == 0 and length == 0:
                break
            continue
        record = pb.Record()  # type: ignore[attr-defined]
        record.ParseFromString(chunk)
        chunk = b""
        which = record.WhichOneof("record_type")
        if which == "run":
            out.update(name=record.run.display_name, group=record.run.run_group,
                       tags=list(record.run.tags))
            out["config"].update({u.key: json.loads(u.value_json) for u in record.run.config.update})
        elif which == "config":
            out["config"].update({u.key: json.loads(u.value_json) for u in record.config.update})
        elif which == "history":
            out["history"].update({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                   for i in record.history.item})
        elif which == "summary":
            out["summary"].update({"/".join(u.nested_key) or u.key: json.loads(u.value_json)
                                   for u in record.summary.update})
    return out
