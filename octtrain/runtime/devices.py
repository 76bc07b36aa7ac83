"""Which device and precision a run's ``runtime:`` section resolves to on this host.

Answers from what is installed and present (``torch_xla`` and a PJRT device, CUDA) without
importing ``torch_xla``: that stays :mod:`octtrain.runtime.backend`'s, which re-exports these names.
torch too is imported only by the answers that need it (CUDA's): a worker placing CPU trials
(``octsearch run --device cpu``) and a trial process whose trainer does not use torch never
load it: about 260 MiB of memory and seconds of CPU per process.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Literal, cast

from octtrain.errors import ConfigError

DeviceKind = Literal["xla", "cuda", "cpu"]
Precision = Literal["fp32", "bf16"]


def xla_available() -> bool:
    """torch_xla is installed and a PJRT device is configured (PJRT_DEVICE, or a TPU is present)."""
    if importlib.util.find_spec("torch_xla") is None:
        return False
    tpu_present = Path("/dev/accel0").exists() or Path("/dev/vfio/0").exists()
    return bool(os.environ.get("PJRT_DEVICE")) or tpu_present


def local_device_count(kind: Literal["tpu", "cuda"]) -> int:
    """TPU chips on this host's PCI bus (torch_xla's count, no runtime started) or CUDA devices."""
    if kind == "cuda":
        import torch

        return torch.cuda.device_count()
    if importlib.util.find_spec("torch_xla") is None:
        return 0
    from octtrain.runtime.backend import tpu_chip_count  # torch_xla is the backend's to import

    return tpu_chip_count()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_device(setting: str) -> DeviceKind:
    """``auto``: ``xla`` when torch_xla and a PJRT device are present, else ``cuda``, else
    ``cpu``. An explicit device that cannot work here is a ConfigError."""
    if setting == "auto":
        if xla_available():
            return "xla"
        return "cuda" if _cuda_available() else "cpu"
    if setting == "xla":
        if importlib.util.find_spec("torch_xla") is None:
            raise ConfigError([("runtime.device", "is 'xla' but torch_xla is not installed "
                                "(pip install 'octsearch[xla]')")])
        return "xla"
    if setting == "cuda":
        if not _cuda_available():
            raise ConfigError([("runtime.device", "is 'cuda' but no CUDA device is available")])
        return "cuda"
    assert setting == "cpu", setting  # RuntimeSection allows nothing else
    return "cpu"


def resolve_precision(setting: str, kind: DeviceKind) -> Precision:
    """``auto``: ``bf16`` on XLA and on a CUDA device that has it, ``fp32`` on CPU (where
    autocast is rarely faster). ``bf16`` on a CUDA device without it is a ConfigError."""
    if kind == "cuda":
        import torch

        cuda_bf16 = torch.cuda.is_bf16_supported()
    else:
        cuda_bf16 = False
    if setting == "bf16" and kind == "cuda" and not cuda_bf16:
        raise ConfigError([("runtime.precision", "is 'bf16' but this CUDA device has no "
                            "bfloat16 support: use fp32")])
    if setting == "auto":
        return "bf16" if kind == "xla" or cuda_bf16 else "fp32"
    return cast("Precision", setting)
