"""Each slot's devices and environment (search/trial/placement.py): pure, for hosts this machine is not."""

from __future__ import annotations

import os

import pytest

from search.errors import OctsearchError
from search.trial.placement import (
    CPU_CORES_ENV,
    SLOT_ENV,
    Assignment,
    auto_parallel,
    available_devices,
    parse_parallel,
    pin_cpu_cores,
    plan_slots,
)


def chips_of(slots: list[Assignment]) -> list[str]:
    return [s.env["TPU_VISIBLE_CHIPS"] for s in slots]


@pytest.mark.parametrize(("n_chips", "per_trial", "chips", "bounds"), [
    (4, 1, ["0", "1", "2", "3"], "1,1,1"),
    (4, 2, ["0,1", "2,3"], "1,2,1"),
    (8, 1, [str(c) for c in range(8)], "1,1,1"),
    (8, 2, ["0,1", "2,3", "4,5", "6,7"], "1,2,1"),
    (8, 4, ["0,1,2,3", "4,5,6,7"], "2,2,1"),
])
def test_tpu_slots_get_their_own_chips_and_ports(n_chips: int, per_trial: int, chips: list[str],
                                                 bounds: str) -> None:
    slots = plan_slots("tpu", list(range(n_chips)), n_chips // per_trial, per_trial)
    assert chips_of(slots) == chips
    for i, slot in enumerate(slots):
        first = i * per_trial
        assert slot.env == {
            SLOT_ENV: str(i),
            "TPU_VISIBLE_CHIPS": chips[i],
            "TPU_CHIPS_PER_PROCESS_BOUNDS": bounds,
            "TPU_PROCESS_BOUNDS": "1,1,1",  # alone in its own topology
            "TPU_PROCESS_ADDRESSES": f"localhost:{8476 + first}",
            "TPU_PROCESS_PORT": str(8476 + first),  # torch_xla's port of its first chip
            "CLOUD_TPU_TASK_ID": "0",
            "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{8576 + i}",
            "TPU_MESH_CONTROLLER_PORT": str(8576 + i),
        }
        assert slot.devices == tuple(range(first, first + per_trial))
    ports = [s.env[v] for s in slots for v in ("TPU_PROCESS_PORT", "TPU_MESH_CONTROLLER_PORT")]
    assert len(set(ports)) == len(ports)


def test_a_4_chip_trial_on_a_4_chip_host_is_one_slot_and_changes_nothing() -> None:
    (slot,) = plan_slots("tpu", [0, 1, 2, 3], 1, 4)
    assert slot.env == {} and slot.label == "tpu:0-3"


@pytest.mark.parametrize(("n", "parallel", "per_trial", "visible", "labels"), [
    (4, 2, 1, ["0", "1"], ["cuda:0", "cuda:1"]),
    (4, 2, 2, ["0,1", "2,3"], ["cuda:0,1", "cuda:2,3"]),
    (8, 2, 4, ["0,1,2,3", "4,5,6,7"], ["cuda:0-3", "cuda:4-7"]),
    (8, 8, 1, [str(g) for g in range(8)], [f"cuda:{g}" for g in range(8)]),
    (8, 4, 2, ["0,1", "2,3", "4,5", "6,7"], ["cuda:0,1", "cuda:2,3", "cuda:4,5", "cuda:6,7"]),
])
def test_cuda_slots_see_only_their_gpus(n: int, parallel: int, per_trial: int,
                                        visible: list[str], labels: list[str]) -> None:
    slots = plan_slots("cuda", list(range(n)), parallel, per_trial)
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in slots] == visible
    assert [s.label for s in slots] == labels


def test_gpus_of_the_workers_own_assignment_are_used_by_their_numbers() -> None:
    available = available_devices("cuda", 2, {"CUDA_VISIBLE_DEVICES": "4,6"})
    assert available == [4, 6]
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in plan_slots("cuda", available, 2)] == ["4", "6"]
    assert available_devices("tpu", 4, {}) == [0, 1, 2, 3]
    with pytest.raises(OctsearchError, match="CUDA_VISIBLE_DEVICES='GPU-1' must be device numbers"):
        available_devices("cuda", 1, {"CUDA_VISIBLE_DEVICES": "GPU-1"})


def test_cpu_slots_share_the_cores_and_set_their_threads() -> None:
    slots = plan_slots("cpu", list(range(8)), 3)
    assert [s.devices for s in slots] == [(0, 1, 2), (3, 4, 5), (6, 7)]
    assert slots[0].env == {SLOT_ENV: "0", CPU_CORES_ENV: "0,1,2", "OMP_NUM_THREADS": "3",
                            "MKL_NUM_THREADS": "3"}
    assert [s.label for s in slots] == ["cpu:0-2", "cpu:3-5", "cpu:6,7"]


@pytest.mark.parametrize(("kind", "available", "parallel", "per_trial", "message"), [
    ("tpu", [0, 1, 2, 3], 3, 2, "--parallel 3 with 2 device(s) per trial needs 6 TPU chips, "
                                "but this worker has 4 (0,1,2,3)"),
    ("cuda", [], 1, 1, "needs 1 CUDA devices, but this worker has 0 (none)"),
    ("cpu", [0, 1], 3, 1, "needs 3 CPU cores, but this worker has 2 (0,1)"),
])
def test_slots_that_do_not_fit_are_refused(kind: str, available: list[int], parallel: int,
                                           per_trial: int, message: str) -> None:
    with pytest.raises(OctsearchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_slots(kind, available, parallel, per_trial)


def test_parallel_is_a_number_or_auto() -> None:
    assert parse_parallel("3") == 3 and parse_parallel("auto") is None
    with pytest.raises(OctsearchError, match="--parallel must be a number of trials or 'auto', "
                                             "got 'two'"):
        parse_parallel("two")
    with pytest.raises(OctsearchError, match="--parallel must be at least 1, got 0"):
        parse_parallel("0")
    assert auto_parallel("tpu", list(range(8)), 2) == 4
    assert auto_parallel("cuda", [0, 1, 2], 1) == 3
    assert auto_parallel("cpu", list(range(16)), 1) == 1  # a CPU host is split only when asked


def test_a_trial_process_pins_itself_to_its_cores() -> None:
    before = os.sched_getaffinity(0)
    try:
        pin_cpu_cores({CPU_CORES_ENV: str(min(before))})
        assert os.sched_getaffinity(0) == {min(before)}
        pin_cpu_cores({})  # no slot: unchanged
        assert os.sched_getaffinity(0) == {min(before)}
    finally:
        os.sched_setaffinity(0, before)
