"""Logging for the library's modules at no cost when nobody asked for logs.

Why not ``logging.getLogger`` at module level: importing ``logging`` costs milliseconds the
one-shot ``lightvm create`` path does not otherwise pay (docs/cli-startup.md). When
``logging`` has not been imported, no handler can exist, and an INFO or DEBUG record would
be dropped anyway: :func:`log` then returns at once. Whoever wants the records imports and
configures ``logging`` (``lightvm -v``: lightvm/cli/logsetup.py; lightvmd:
lightvm/daemon/logsetup.py; an embedding program: its own set-up), and from then on the
records go through ``logging.getLogger(name)`` as usual.

Loggers: ``lightvm.toolstack`` (a VM's steps, INFO: ``-v``), ``lightvm.qmp`` (every QMP
command and reply, DEBUG: ``-vv``), ``lightvm.daemon`` (lightvmd's own messages).
"""

from __future__ import annotations

import sys
from typing import Any

DEBUG = 10
INFO = 20
WARNING = 30


def log(level: int, name: str, msg: str, *args: Any) -> None:
    """``logging.getLogger(name).log(level, msg, *args)`` if ``logging`` is loaded and the
    logger is enabled for ``level``; else nothing (and nothing formatted)."""
    logging = sys.modules.get("logging")
    if logging is None:
        return
    logger = logging.getLogger(name)
    if logger.isEnabledFor(level):
        logger.log(level, msg, *args)
