"""Device resolution and one rank's :class:`Runtime` (``octtrain/runtime/backend.py``).

The Runtime tests run on ``OCTTRAIN_TEST_DEVICE`` (``cpu`` by default), as timm's tests pick
their device from the environment: ``OCTTRAIN_TEST_DEVICE=xla PJRT_DEVICE=CPU`` runs them on
CPU-PJRT, ``=cuda`` on a GPU. Starting ranks is in ``test_launch.py``, training
on XLA in ``test_xla.py``.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from octtrain.config.sections import RuntimeSection
from octtrain.errors import ConfigError
from octtrain.runtime.backend import Runtime, init_runtime, resolve_device, resolve_precision

TEST_DEVICE = os.environ.get("OCTTRAIN_TEST_DEVICE", "cpu")


@pytest.fixture
def runtime() -> Runtime:
    return init_runtime(RuntimeSection(device=TEST_DEVICE))


# ---- device resolution ------------------------------------------------------------------------


@pytest.fixture
def torch_xla_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``find_spec('torch_xla')`` succeed whether or not it is installed here."""
    real = importlib.util.find_spec
    spec = importlib.util.spec_from_loader("torch_xla", loader=None)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: spec if name == "torch_xla" else real(name, *a))


@pytest.fixture
def torch_xla_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch_xla" else real(name, *a))


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.usefixtures("torch_xla_installed", "no_cuda")
def test_auto_picks_xla_when_torch_xla_and_a_pjrt_device_are_present(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    assert resolve_device("auto") == "xla"


@pytest.mark.skipif(os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0"),
                    reason="a TPU is attached: auto is xla without PJRT_DEVICE")
@pytest.mark.usefixtures("torch_xla_installed", "no_cuda")
def test_auto_ignores_torch_xla_without_a_pjrt_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    assert resolve_device("auto") == "cpu"


@pytest.mark.usefixtures("torch_xla_missing")
def test_auto_falls_back_to_cuda_then_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PJRT_DEVICE", "CPU")  # a PJRT device without torch_xla is no XLA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"


@pytest.mark.usefixtures("torch_xla_missing")
def test_explicit_xla_without_torch_xla_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.device: is 'xla' but torch_xla is not"):
        resolve_device("xla")


@pytest.mark.usefixtures("no_cuda")
def test_explicit_cuda_without_a_gpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"runtime\.device: is 'cuda' but no CUDA device"):
        resolve_device("cuda")


def test_explicit_cpu_is_cpu() -> None:
    assert resolve_device("cpu") == "cpu"


# ---- one rank's Runtime -----------------------------------------------------------------------


def test_single_process_runtime_is_the_master_of_a_world_of_one(runtime: Runtime) -> None:
    assert (runtime.kind, runtime.rank, runtime.world_size, runtime.local_rank) == (
        TEST_DEVICE, 0, 1, 0)
    assert runtime.is_master
    assert runtime.device.type == TEST_DEVICE


def test_loader_moves_batches_to_the_device_and_stops_cleanly_when_closed_early(
    runtime: Runtime,
) -> None:
    data = DataLoader(TensorDataset(torch.arange(40.0).view(20, 2), torch.arange(20)), batch_size=2)
    threads_before = threading.active_count()
    batches = runtime.loader(data)
    firsts = [next(batches) for _ in range(3)]
    batches.close()  # an epoch that leaves micro-batches over
    assert [x.device.type for x, _ in firsts] == [TEST_DEVICE] * 3
    assert [y.cpu().tolist() for _, y in firsts] == [[0, 1], [2, 3], [4, 5]]
    # On XLA the ParallelLoader's feeder threads must be gone, not blocked on a full queue.
    assert threading.active_count() == threads_before
    assert len(list(runtime.loader(data))) == 10


def _model_and_optimizer(device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    model.to(device)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "lr": 3e-2, "weight_decay": 1e-2},
                                   {"params": no_decay, "lr": 1e-2, "weight_decay": 0.0}])
    return model, optimizer


def _train(runtime: Runtime | None, device: torch.device, grad_clip: float) -> dict[str, Any]:
    model, optimizer = _model_and_optimizer(device)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    generator = torch.Generator().manual_seed(1)
    for _ in range(4):
        x = torch.randn(5, 6, generator=generator).to(device)
        y = torch.randint(0, 3, (5,), generator=generator).to(device)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if runtime is None:  # the reference: plain AdamW on the CPU
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
        else:
            runtime.optimizer_step(optimizer, grad_clip)
            runtime.sync()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return {"weights": [p.detach().cpu() for p in model.parameters()],
            "lrs": [g["lr"] for g in optimizer.param_groups]}


@pytest.mark.parametrize("grad_clip", [0.0, 0.5])
def test_optimizer_step_is_adamw_with_a_scheduled_lr(runtime: Runtime, grad_clip: float) -> None:
    """Same weights as torch's AdamW on the CPU; on XLA this checks that moving the LR onto
    the device (against recompiles) changes nothing, and that the groups keep float LRs."""
    got = _train(runtime, runtime.device, grad_clip)
    want = _train(None, torch.device("cpu"), grad_clip)
    for g, w in zip(got["weights"], want["weights"], strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert got["lrs"] == want["lrs"]
    assert all(type(lr) is float for lr in got["lrs"])


def test_collectives_of_a_world_of_one_are_identities(runtime: Runtime) -> None:
    t = torch.arange(4.0, device=runtime.device)
    assert runtime.all_reduce_sum(t) is t
    assert runtime.broadcast_object({"w": [1.0, 2.0]}, "tag") == {"w": [1.0, 2.0]}
    assert runtime.all_gather_object(["a.npy"], "tag") == [["a.npy"]]
    runtime.barrier("tag")  # returns at once


def test_compile_count_is_counted_on_xla_only(runtime: Runtime) -> None:
    count = runtime.compile_count()
    if runtime.kind == "xla":
        assert isinstance(count, int) and count >= 0
    else:
        assert count is None


def test_to_cpu_copies_nested_tensors(runtime: Runtime) -> None:
    device = runtime.device
    state = {"a": torch.ones(2, device=device), "b": [torch.zeros(1, device=device), 3]}
    out = runtime.to_cpu(state)
    assert out["a"].device.type == "cpu" and out["b"][0].device.type == "cpu" and out["b"][1] == 3


# ---- precision ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "kind", "expected"), [
    ("auto", "cpu", "fp32"), ("auto", "xla", "bf16"), ("bf16", "cpu", "bf16"),
    ("fp32", "xla", "fp32"), ("fp32", "cpu", "fp32"),
])
def test_precision_auto_is_bf16_on_xla_and_fp32_on_cpu(setting: str, kind: str, expected: str) -> None:
    assert resolve_precision(setting, kind) == expected  # type: ignore[arg-type]


def test_bf16_autocast_computes_in_bf16_and_leaves_the_parameters_fp32(runtime: Runtime) -> None:
    runtime.precision = "bf16"
    layer = torch.nn.Linear(4, 2).to(runtime.device)
    with runtime.autocast():
        out = layer(torch.ones(3, 4, device=runtime.device))
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert layer.weight.dtype == layer.weight.grad.dtype == torch.float32  # type: ignore[union-attr]
    runtime.precision = "fp32"
    with runtime.autocast():
        assert layer(torch.ones(3, 4, device=runtime.device)).dtype == torch.float32


def test_memory_available_is_the_device_s_free_memory(runtime: Runtime) -> None:
    free = runtime.memory_available()
    if runtime.kind == "xla":  # CPU-PJRT reports no allocator statistics
        return
    assert free is not None and 2**26 < free < 2**50
