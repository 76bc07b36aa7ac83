"""The resume checkpoint: everything a stopped run needs to continue as if it had never stopped.

Written by ``fit(..., preempt_to=PATH)`` when a stop was requested (:mod:`octtrain.runtime.preempt`),
at an optimizer-step boundary; read by ``fit(..., resume_from=PATH)``. Beyond what ``last.pt``
holds (model, optimizer, scheduler: the LR schedule continues from its step) it keeps the
position (epoch and next micro-batch: the sampler's order depends on seed and epoch only, so
the resumed run skips exactly the batches trained), the early-stopping state, the history of
the epochs done, and per rank the random generators and the partial sums of the stopped epoch.

On CPU with ``data.num_workers: 0`` the resumed run is bit-identical to an uninterrupted one
(tests/octtrain/test_resume.py), on XLA too without augmentation and dropout. With DataLoader
workers the batches are the same but the workers' augmentation draws of the stopped epoch start
afresh; on XLA the loader's feeder thread has drawn augmentation ahead of the step when the
generators are saved, and the XLA device generator (dropout) is not saved: torch_xla exposes
only its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from octtrain.errors import ConfigError, host_errors
from octtrain.model import OctClassifier
from octtrain.runtime import Runtime
from octtrain.train.checkpoint import load_checkpoint, save_checkpoint
from octtrain.train.early_stop import EarlyStopping
from octtrain.train.epoch import TrainProgress, Update

KIND = "resume"  # the checkpoint's "kind": last.pt / best.pt hold none
CONFIG_FREE = ("device", "xla_cache_dir")  # runtime keys a resumed run may change


@dataclass
class ResumePoint:
    """Where a resumed run continues, and what it carries over."""

    epoch: int
    progress: TrainProgress  # this rank's
    history: list[dict[str, Any]]


def rng_state(runtime: Runtime) -> dict[str, Any]:
    """This process's random generators (Python, NumPy, torch CPU, CUDA), as tensors and plain
    values (the checkpoint loads with ``weights_only``). XLA's device generator is not among
    them: torch_xla exposes only its seed, not its running state."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = cast("tuple[str, np.ndarray, int, int, float]",
                                           np.random.get_state())
    state: dict[str, Any] = {
        "python": [version, torch.tensor(mt, dtype=torch.int64), gauss],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state()}
    if runtime.kind == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(runtime.device)
    return state


def set_rng_state(runtime: Runtime, state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt.tolist()), gauss))
    keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and runtime.kind == "cuda":
        torch.cuda.set_rng_state(state["cuda"], runtime.device)


def rank_state(runtime: Runtime, progress: TrainProgress) -> dict[str, Any]:
    """One rank's share of a resume checkpoint (on the CPU): generators and partial sums."""
    return {"rng": rng_state(runtime), "micro_batch": progress.micro_batch,
            "loss_sum": runtime.to_cpu(progress.loss_sum), "conf": runtime.to_cpu(progress.conf),
            "io_s": progress.io_s, "compute_s": progress.compute_s}


def save_resume(path: str | Path, runtime: Runtime, *, epoch: int, ranks: list[dict[str, Any]],
                model: OctClassifier, update: Update, stopper: EarlyStopping,
                history: list[dict[str, Any]], config: dict[str, Any]) -> None:
    """Write the resume checkpoint (rank 0 only; ``ranks`` gathered from every rank)."""
    with host_errors("the resume checkpoint", path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {
        "kind": KIND,
        "epoch": epoch,
        "model": runtime.to_cpu(model.state_dict()),
        "optimizer": runtime.to_cpu(update.optimizer.state_dict()),
        "scheduler": {k: v for k, v in update.scheduler.state_dict().items() if k != "lr_lambdas"},
        "early_stopping": {"best": stopper.best, "best_epoch": stopper.best_epoch,
                           "bad_epochs": stopper.bad_epochs},
        "history": history,
        "ranks": ranks,
        "config": config,
    }, "the resume checkpoint")


def restore(path: str | Path, runtime: Runtime, *, model: OctClassifier, update: Update,
            stopper: EarlyStopping, config: dict[str, Any]) -> ResumePoint:
    """Load the resume checkpoint into this rank's model, optimizer, scheduler, early stopping
    and generators; where to continue. A ConfigError when it is no resume checkpoint, or one of
    a run with another config or another number of processes."""
    state = load_checkpoint(path)
    if state.get("kind") != KIND:
        raise ConfigError([("", f"{str(path)!r} is not a resume checkpoint")])
    _check_config(path, state["config"], config)
    if len(state["ranks"]) != runtime.world_size:
        raise ConfigError([("runtime.num_processes", f"{str(path)!r} was written by "
                            f"{len(state['ranks'])} process(es), not {runtime.world_size}")])
    model.load_state_dict(state["model"])
    update.optimizer.load_state_dict(state["optimizer"])
    # The schedule's functions are rebuilt from the config; only their position is loaded.
    update.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None] * len(
        update.optimizer.param_groups)})
    stopper.best = state["early_stopping"]["best"]
    stopper.best_epoch = state["early_stopping"]["best_epoch"]
    stopper.bad_epochs = state["early_stopping"]["bad_epochs"]
    mine = state["ranks"][runtime.rank]
    set_rng_state(runtime, mine["rng"])
    progress = TrainProgress(mine["micro_batch"], mine["loss_sum"], mine["conf"], mine["io_s"],
                             mine["compute_s"])
    return ResumePoint(int(state["epoch"]), progress, list(state["history"]))


def _check_config(path: str | Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    def comparable(cfg: dict[str, Any]) -> dict[str, Any]:
        runtime = {k: v for k, v in cfg.get("runtime", {}).items() if k not in CONFIG_FREE}
        return {**cfg, "runtime": runtime}

    a, b = comparable(saved), comparable(current)
    differ = sorted(f"{s}.{k}" for s in set(a) | set(b)
                    for k in set(a.get(s) or {}) | set(b.get(s) or {})
                    if (a.get(s) or {}).get(k) != (b.get(s) or {}).get(k))
    if differ:
        raise ConfigError([("", f"{str(path)!r} is the resume checkpoint of a run with another "
                            f"config (differs in {', '.join(differ)})")])

