"""A search space: a space file validated into a ``SearchSpace`` with its stored form and
``diff_spaces`` (``search_space``), one searched parameter (``params``), and the ``sampler:`` and
``pruner:`` sections (``sampler_pruner``).
"""

from __future__ import annotations

from search.space.search_space import SearchSpace, diff_spaces, load_space, space_from_dict, trainer_defaults

__all__ = [
    "SearchSpace",
    "diff_spaces",
    "load_space",
    "space_from_dict",
    "trainer_defaults",
]
