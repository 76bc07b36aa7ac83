"""What every trial will need, checked once before the first trial is created.

``octsearch run`` and ``octsearch check`` refuse (one line, exit status 2) a search whose
trials could only fail: a data manifest (or class folder) that is missing or unreadable from
this worker's working directory, volumes that cannot be read (a small sample of them), or a
device this host does not have. Without these checks every trial would fail after its set-up
and the worker would give up after a few, having created the study and its failed trials.

The checks are cheap: the manifest is indexed (every listed volume must exist), at most
:data:`SAMPLE_VOLUMES` volumes are read, torch is imported only for ``cuda`` and torch_xla is
never imported (only looked up).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from octtrain.config import DataSection, TrainConfig
from octtrain.data import Entry, index_folder, read_manifest, read_volume
from octtrain.errors import DataError
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
        entries = read_manifest(given) if data.manifest is not None else index_folder(given)
        if not entries:
            raise DataError(f"{given}: no volumes")
        checked = sample(entries)
        for entry in checked:
            read_volume(entry.path, allow_single_bscan=data.allow_single_bscan)
    except DataError as err:
        where = "" if Path(given).is_absolute() else f" (relative to {os.getcwd()})"
        raise PreflightError(f"{key} {given!r}{where}: {err}") from None
    return f"{len(entries)} volumes in {given}; {len(checked)} of them read"


def preflight(cfg: TrainConfig, device: str | None = None) -> list[str]:
    """Every check for trials of the base config ``cfg`` (``device``: the ``--device`` that
    replaces its ``runtime.device``); what was checked, one line each, or a PreflightError."""
    return [f"data: {check_data(cfg.data)}",
            f"device: {check_device(device or cfg.runtime.device)} (available)"]


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
