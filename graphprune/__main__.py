"""``python -m graphprune``: the same command line as the ``graphprune`` script."""

from graphprune.cli import main

raise SystemExit(main())
