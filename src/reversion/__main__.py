"""``python -m reversion``: the ``reversion`` command line (see :mod:`reversion.cli`)."""

import sys

from reversion.cli import main

if __name__ == "__main__":
    sys.exit(main())
