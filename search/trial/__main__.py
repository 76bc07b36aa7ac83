"""``python -m search.trial REQUEST.json``: the process of one trial (see process.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from search.trial.lifeline import die_with_parent


def main() -> None:
    # First thing (though importing the search package already took a moment: a worker that
    # died meanwhile is noticed, as the parent pid is not the one it was given).
    die_with_parent()
    from search.trial.placement import pin_cpu_cores
    from search.trial.process import run_child

    pin_cpu_cores()  # a CPU slot's share of the cores, before torch starts its threads

    if len(sys.argv) != 2:
        sys.exit("usage: python -m search.trial REQUEST.json")
    run_child(Path(sys.argv[1]))


if __name__ == "__main__":
    main()
