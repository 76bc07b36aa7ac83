"""``python -m search.cli``: the ``octsearch`` command."""

from __future__ import annotations

import sys

from search.cli import main

sys.exit(main())
