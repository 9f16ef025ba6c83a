"""``python -m demo.stream_job``: run the stream job (see the package docstring)."""

import sys

from .cli import main

sys.exit(main())
