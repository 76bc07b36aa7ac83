"""TPU chip topology as PJRT environment variables: which chips a process drives, on which ports.

Pure functions, no ``torch_xla`` import: :mod:`search.trial.placement` computes with them the
environment of each trial slot of a worker (several trials on one TPU VM, each on its own
chips), and :mod:`octtrain.runtime.backend` the environment of each rank of a multi-process run on
its slot's chips. The variable names and conventions are torch_xla 2.9's
(``torch_xla/_internal/tpu.py``): ``configure_one_chip_topology`` for one process on one chip,
``configure_topology`` for one process per chip (``TPU_VISIBLE_CHIPS`` the chip,
``TPU_PROCESS_PORT`` = base port 8476 + local rank, ``TPU_PROCESS_ADDRESSES`` every rank's
``host:port``, ``CLOUD_TPU_TASK_ID`` the rank). ``tests/octtrain/test_topology.py`` checks these
functions against torch_xla's own.

Chips of one host are numbered row by row; a group of K chips has the bounds of the smallest
host with K chips (v4-8: 2×2, v5e-8 / v6e-8: 2×4): 1 → ``1,1,1``, 2 → ``1,2,1``,
4 → ``2,2,1``, 8 → ``2,4,1``.
"""

from __future__ import annotations

from collections.abc import Sequence

TPU_BASE_PORT = 8476  # torch_xla's default base port of TPU processes (configure_topology)
TPU_MESH_BASE_PORT = 8576  # mesh controllers of a worker's slots: 8576 + slot (apart from 8476..)
CHIP_BOUNDS = {1: "1,1,1", 2: "1,2,1", 4: "2,2,1", 8: "2,4,1"}

# Every variable a TPU process's topology consists of (what a slot or rank sets, all of them).
TPU_TOPOLOGY_VARS = ("TPU_VISIBLE_CHIPS", "TPU_CHIPS_PER_PROCESS_BOUNDS", "TPU_PROCESS_BOUNDS",
                     "TPU_PROCESS_ADDRESSES", "TPU_PROCESS_PORT", "CLOUD_TPU_TASK_ID",
                     "TPU_MESH_CONTROLLER_ADDRESS", "TPU_MESH_CONTROLLER_PORT")


def chip_bounds(n_chips: int) -> str:
    """The ``x,y,z`` bounds of ``n_chips`` chips of one host (1, 2, 4 or 8)."""
    try:
        return CHIP_BOUNDS[n_chips]
    except KeyError:
        raise ValueError(f"a TPU process group has 1, 2, 4 or 8 chips, but got n_chips={n_chips}."
                         ) from None


def tpu_process_env(chips: Sequence[int], *, port: int, mesh_port: int) -> dict[str, str]:
    """One process driving ``chips`` (a slot of K chips), alone in its own topology.

    ``port`` is its TPU process port and ``mesh_port`` its mesh controller's: both must differ
    between the processes of one host.
    """
    return {
        "TPU_VISIBLE_CHIPS": ",".join(str(c) for c in chips),
        "TPU_CHIPS_PER_PROCESS_BOUNDS": chip_bounds(len(chips)),
        "TPU_PROCESS_BOUNDS": "1,1,1",
        "TPU_PROCESS_ADDRESSES": f"localhost:{port}",
        "TPU_PROCESS_PORT": str(port),
        "CLOUD_TPU_TASK_ID": "0",
        "TPU_MESH_CONTROLLER_ADDRESS": f"localhost:{mesh_port}",
        "TPU_MESH_CONTROLLER_PORT": str(mesh_port),
    }


def tpu_rank_env(chips: Sequence[int], rank: int, *, base_port: int) -> dict[str, str]:
    """Rank ``rank`` of a run with one process per chip of ``chips`` (the ranks of one trial on
    its slot's chips): what torch_xla's ``configure_topology`` sets for a host of
    ``len(chips)`` chips, with the chips and ports of the slot instead of 0.. and 8476.."""
    ports = [base_port + i for i in range(len(chips))]
    return {
        "TPU_VISIBLE_CHIPS": str(chips[rank]),
        "TPU_CHIPS_PER_PROCESS_BOUNDS": "1,1,1",
        "TPU_PROCESS_BOUNDS": chip_bounds(len(chips)),
        "TPU_PROCESS_ADDRESSES": ",".join(f"localhost:{p}" for p in ports),
        "TPU_PROCESS_PORT": str(ports[rank]),
        "CLOUD_TPU_TASK_ID": str(rank),
    }


def parse_chips(text: str) -> list[int]:
    """``TPU_VISIBLE_CHIPS`` (``"2,3"``) as chip numbers; a ValueError quoting a bad value."""
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"TPU_VISIBLE_CHIPS must be chip numbers like '2,3', but got {text!r}."
                         ) from None
