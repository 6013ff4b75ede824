"""``python -m butler``: the same command line as the ``butler`` console script."""

import sys

from butler.cli import main

if __name__ == "__main__":
    sys.exit(main())
