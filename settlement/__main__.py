"""``python -m settlement``: the same as the ``settlement`` console script."""

from .cli import main

raise SystemExit(main())
