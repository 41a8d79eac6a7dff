"""Allow ``python -m binforge``."""

from binforge.cli import main

raise SystemExit(main())
