"""``python -m statekit`` and the ``statekit`` console script: see :mod:`statekit.cli`."""

from __future__ import annotations

import sys

from statekit.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
