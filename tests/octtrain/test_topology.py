"""TPU topology environments, checked against torch_xla's own helpers (importable without a TPU:
its metadata comes from environment variables with ``TPU_SKIP_MDS_QUERY``)."""

from __future__ import annotations

import os

import pytest

from octtrain.runtime.topology import (
    TPU_BASE_PORT,
    TPU_TOPOLOGY_VARS,
    chip_bounds,
    parse_chips,
    tpu_process_env,
    tpu_rank_env,
)

tpu = pytest.importorskip("torch_xla._internal.tpu")

RANK_VARS = ("TPU_VISIBLE_CHIPS", "TPU_CHIPS_PER_PROCESS_BOUNDS", "TPU_PROCESS_BOUNDS",
             "TPU_PROCESS_ADDRESSES", "TPU_PROCESS_PORT", "CLOUD_TPU_TASK_ID")
# One host of n chips, as its TPU metadata describes it (v4-8: 2x2 chips; v5e-8: 2x4).
HOSTS = {1: ("v5litepod-1", "1,1,1"), 2: ("v5litepod-2", "1,2,1"), 4: ("v4-8", "2,2,1"),
         8: ("v5litepod-8", "2,4,1")}


def torch_xla_rank_env(monkeypatch: pytest.MonkeyPatch, n_chips: int, rank: int,
                       base_port: int) -> dict[str, str]:
    """What ``torch_xla._internal.tpu.configure_topology`` sets for ``rank`` of ``n_chips``
    processes on a host of ``n_chips`` chips."""
    for var in TPU_TOPOLOGY_VARS:
        monkeypatch.delenv(var, raising=False)
    accelerator, bounds = HOSTS[n_chips]
    for var, value in (("TPU_SKIP_MDS_QUERY", "1"), ("TPU_ACCELERATOR_TYPE", accelerator),
                       ("TPU_HOST_BOUNDS", "1,1,1"), ("TPU_CHIPS_PER_HOST_BOUNDS", bounds),
                       ("TPU_WORKER_ID", "0"), ("TPU_WORKER_HOSTNAMES", "localhost")):
        monkeypatch.setenv(var, value)
    tpu.configure_topology(rank, n_chips, base_port=base_port)
    return {var: os.environ[var] for var in RANK_VARS}


@pytest.mark.parametrize("n_chips", [1, 2, 4, 8])
def test_ranks_on_all_chips_match_torch_xla(monkeypatch: pytest.MonkeyPatch, n_chips: int) -> None:
    for rank in range(n_chips):
        ours = tpu_rank_env(list(range(n_chips)), rank, base_port=TPU_BASE_PORT)
        assert ours == torch_xla_rank_env(monkeypatch, n_chips, rank, TPU_BASE_PORT)


def test_ranks_on_a_slot_take_its_chips_and_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chips 4-7 of an 8-chip host: torch_xla's layout of a 4-chip host, on chips 4.. and
    ports 8480.. (torch_xla itself can only number from chip 0)."""
    theirs = torch_xla_rank_env(monkeypatch, 4, 2, 8480)
    ours = tpu_rank_env([4, 5, 6, 7], 2, base_port=8480)
    assert ours == {**theirs, "TPU_VISIBLE_CHIPS": "6"}
    assert ours["TPU_PROCESS_ADDRESSES"] == ",".join(f"localhost:{p}" for p in range(8480, 8484))


def test_one_process_on_one_chip_matches_torch_xla(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in TPU_TOPOLOGY_VARS:
        monkeypatch.delenv(var, raising=False)
    tpu.configure_one_chip_topology()
    ours = tpu_process_env([0], port=8476, mesh_port=8576)
    for var in ("TPU_VISIBLE_CHIPS", "TPU_CHIPS_PER_PROCESS_BOUNDS", "TPU_PROCESS_BOUNDS"):
        assert ours[var] == os.environ[var]


def test_chip_bounds_are_the_hosts_and_other_counts_are_refused() -> None:
    assert [chip_bounds(n) for n in HOSTS] == [bounds for _, bounds in HOSTS.values()]
    assert tpu.MeshShape.from_string(chip_bounds(8)).size == 8  # torch_xla's reading of it
    with pytest.raises(ValueError, match="1, 2, 4 or 8 chips, but got n_chips=3"):
        chip_bounds(3)
    assert parse_chips("2,3") == [2, 3]
    with pytest.raises(ValueError, match="chip numbers like '2,3', but got 'a,b'"):
        parse_chips("a,b")
