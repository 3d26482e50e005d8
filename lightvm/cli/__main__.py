"""``python -m lightvm.cli``: the same as the ``lightvm`` command."""

import sys

from lightvm.cli.main import main

sys.exit(main())
