"""``python -m reversion.book``: execute the notebooks and build the book (:mod:`reversion.book.build`)."""

import sys

from reversion.book.build import main

if __name__ == "__main__":
    sys.exit(main())
