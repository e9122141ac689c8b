"""``python -m jaxprune``: the ``jaxprune`` command (see :mod:`jaxprune.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
