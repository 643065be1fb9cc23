"""``python -m fusenas.cli``: the ``fusenas`` command."""

import sys

from fusenas.cli.main import main

sys.exit(main())
