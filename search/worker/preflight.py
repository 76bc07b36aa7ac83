"""What every trial will need, checked once before the first trial is created.

``octsearch run`` and ``octsearch check`` refuse (one line, exit status 2) a search whose
trials could only fail: a data manifest (or class folder) that is missing or unreadable from
this worker's working directory, volumes that cannot be read (a small sample of them), or a
device this host does not have. Without these checks every trial would fail after its set-up
and the worker would give up after a few, having created the study and its failed trials.

The host is checked too (:func:`check_host`): every folder a trial writes to (run directories,
resume checkpoints, artifacts, the data set store) must be a folder this worker can create a file
in, and each file system must have room for what the trials will write there. Without it a
``--runs-dir`` that is a file failed every enqueued trial, and their configurations were lost.

The checks are cheap: the manifest is indexed (every listed volume must exist), at most
:data:`SAMPLE_VOLUMES` volumes are read, a probe file is created and removed in each folder,
torch is imported only for ``cuda`` and torch_xla and transformers are never imported.
"""

from __future__ import annotations

import importlib.util
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from octtrain.config import DataSection, TrainConfig
from octtrain.data import Entry, default_cache_dir, index_folder, read_manifest, read_volume
from octtrain.errors import DataError
from octtrain.model import approx_encoder_parameters
from search.errors import PreflightError, StorageError

SAMPLE_VOLUMES = 3  # volumes read before the first trial: the first, one in the middle, the last


def check_device(setting: str) -> str:
    """``setting`` (``auto``, ``xla``, ``cuda``, ``cpu``) if this host can run it, else a
    PreflightError; ``auto`` always can (it falls back to the CPU)."""
    if setting == "xla":
        if importlib.util.find_spec("torch_xla") is None:
            raise PreflightError("device 'xla': torch_xla is not installed on this host "
                                 "(pip install 'octsearch[xla]')")
        from octtrain.runtime import xla_available

        if not xla_available():
            raise PreflightError("device 'xla': no PJRT device on this host (no TPU found and "
                                 "PJRT_DEVICE is not set; PJRT_DEVICE=CPU runs XLA on the CPU)")
    elif setting == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise PreflightError("device 'cuda': no CUDA device is available on this host")
    return setting


def sample(entries: Sequence[Entry], n: int = SAMPLE_VOLUMES) -> list[Entry]:
    """Up to ``n`` entries spread over ``entries``: the first, the last, evenly between."""
    if len(entries) <= n:
        return list(entries)
    return [entries[i * (len(entries) - 1) // (n - 1)] for i in range(n)]


def check_data(data: DataSection) -> str:
    """Index the dataset and read a sample of its volumes; what was checked, in words, or a
    PreflightError naming the file (and the folder relative paths were resolved against)."""
    given = data.manifest if data.manifest is not None else data.root
    assert given is not None  # DataSection holds exactly one of the two
    key = "data.manifest" if data.manifest is not None else "data.root"
    try:
        entries = _entries(data)
        if not entries:
            raise DataError(f"{given}: no volumes")
        checked = sample(entries)
        for entry in checked:
            read_volume(entry.path, allow_single_bscan=data.allow_single_bscan)
    except DataError as err:
        where = "" if Path(given).is_absolute() else f" (relative to {os.getcwd()})"
        raise PreflightError(f"{key} {given!r}{where}: {err}") from None
    return f"{len(entries)} volumes in {given}; {len(checked)} of them read"


def _entries(data: DataSection) -> list[Entry]:
    if data.manifest is not None:
        return read_manifest(data.manifest)
    assert data.root is not None  # DataSection holds exactly one of the two
    return index_folder(data.root)


def preflight(cfg: TrainConfig, device: str | None = None) -> list[str]:
    """Every check for trials of the base config ``cfg`` (``device``: the ``--device`` that
    replaces its ``runtime.device``); what was checked, one line each, or a PreflightError."""
    return [f"data: {check_data(cfg.data)}",
            f"device: {check_device(device or cfg.runtime.device)} (available)"]


# A trial's checkpoints, in bytes per encoder parameter (an upper estimate): best.pt and last.pt
# hold the float32 weights, and last.pt and the resume checkpoint also AdamW's two moments.
CHECKPOINT_BYTES_PER_PARAMETER = 4 + (4 + 8) + (4 + 8)


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def check_writable(folder: Path, what: str) -> str:
    """``folder``, or the nearest of its parents that exists (the worker makes the rest), is a
    folder in which this worker can create and remove a file; a PreflightError naming it and the
    cause otherwise. Creates nothing that stays."""
    existing = _nearest_existing(folder)
    where = "" if existing == folder.absolute() else f" (its parent {str(existing)!r})"
    if not existing.is_dir():
        raise PreflightError(f"{what} {str(folder)!r}{where}: not a folder")
    probe = existing / f".octsearch-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"octsearch pre-flight probe\n")
        probe.unlink()
    except OSError as err:
        cause = err.strerror or type(err).__name__
        raise PreflightError(f"{what} {str(folder)!r}{where}: cannot write a file there ({cause})") from None
    return f"{what} {folder}: writable"


def _nearest_existing(folder: Path) -> Path:
    path = folder.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def needed_bytes(cfg: TrainConfig, volumes: int, trials_at_once: int) -> dict[str, int]:
    """What trials of ``cfg`` write, by place: the checkpoints of ``trials_at_once`` running
    trials (``checkpoints``; none when the encoder's size is unknown: a hub id) and the data set
    store of ``volumes`` volumes (``store``)."""
    shape = cfg.data.shape
    store = volumes * math.prod(shape) * np.dtype(cfg.data.store).itemsize
    params = approx_encoder_parameters(cfg.model.encoder)
    checkpoints = trials_at_once * CHECKPOINT_BYTES_PER_PARAMETER * params if params else 0
    return {"checkpoints": checkpoints, "store": store}


def check_host(cfg: TrainConfig, folders: Mapping[str, Path], *, trials_at_once: int) -> list[str]:
    """Every folder in ``folders`` (what -> path: ``--runs-dir``, ``--checkpoint-dir``,
    ``--artifacts-dir``) and the data set store's (``data.cache_dir``) writable, and room on
    each file system for what the trials write there; one line each, or a PreflightError.
    Run after :func:`preflight` (the data set is readable)."""
    volumes = len(_entries(cfg.data))
    cache = Path(cfg.data.cache_dir) if cfg.data.cache_dir is not None else default_cache_dir()
    places = {**folders, "data.cache_dir": cache}
    lines = [check_writable(path, what) for what, path in places.items()]
    need = needed_bytes(cfg, volumes, trials_at_once)
    store_built = any((cache / "consolidated").glob("*/index.json"))  # perhaps this one: no charge
    wants = {("--checkpoint-dir" if "--checkpoint-dir" in places else "--runs-dir"): need["checkpoints"],
             "data.cache_dir": 0 if store_built else need["store"]}
    by_device: dict[int, list[str]] = {}
    for what in wants:
        by_device.setdefault(os.stat(_nearest_existing(places[what])).st_dev, []).append(what)
    for whats in by_device.values():
        total = sum(wants[w] for w in whats)
        free = shutil.disk_usage(_nearest_existing(places[whats[0]])).free
        parts = ", ".join(f"{w} {_size(wants[w])}" for w in whats if wants[w])
        if total > free:
            raise PreflightError(
                f"not enough disk space for the trials: {_size(free)} free for "
                f"{' and '.join(str(places[w]) for w in whats)}, about {_size(total)} needed "
                f"({parts}: the checkpoints of {trials_at_once} trial(s) at once and the data set "
                "store); free some space or choose another folder")
        if total:
            lines.append(f"disk: {_size(free)} free for about {_size(total)} ({parts})")
    return lines


def check_storage(url: str) -> str:
    """A ``grpc://`` proxy must answer (a PreflightError naming it otherwise); a database URL is
    checked when the worker opens it, before any trial either."""
    from search.storage import is_grpc_url, open_grpc_storage

    if not is_grpc_url(url):
        return f"{url.split(':', 1)[0]} (opened by the worker)"
    try:
        open_grpc_storage(url, heartbeat_interval=None).close()
    except StorageError as err:
        raise PreflightError(str(err)) from None
    return f"proxy at {url} answers"
