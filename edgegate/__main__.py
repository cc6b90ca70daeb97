"""``python -m edgegate`` = the ``edgegate`` command."""

from edgegate.cli import main

raise SystemExit(main())
