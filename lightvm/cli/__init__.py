"""The ``lightvm`` command: main (parser, dispatch) and one module per command group.

Nothing outside this package imports it.
"""

import time

IMPORTED_AT = time.perf_counter()  # create's "lightvm command: N ms since its import"
