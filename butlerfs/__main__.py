"""``python -m butlerfs``: the same as the ``butlerfs`` console script."""

from butlerfs.cli import main

raise SystemExit(main())
