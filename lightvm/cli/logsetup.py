"""``-v`` / ``-vv``: stdlib logging of the toolstack's steps (INFO) and QMP traffic (DEBUG) on stderr.

Why a module of its own, imported only when ``-v`` is given: ``logging`` costs milliseconds
of import that the thin path (lightvm/cli/thin.py) must not pay; a command without ``-v``
never imports this. The library modules log through ``logging.getLogger("lightvm....")``
only where they already pay for the import; without a handler configured, Python's default
(WARNING and up, on stderr) is what a library user gets.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "lightvm %(relativeCreated)8.1fms %(levelname)-5s %(name)s: %(message)s"


def level_for(verbose: int) -> int:
    """-v: INFO (the toolstack's steps); -vv and more: DEBUG (QMP commands and replies too)."""
    return logging.INFO if verbose == 1 else logging.DEBUG


def configure(verbose: int) -> None:
    """Log the ``lightvm`` loggers at ``-v``'s level on stderr (once: a second call only
    changes the level)."""
    logger = logging.getLogger("lightvm")
    logger.setLevel(level_for(verbose))
    if not any(getattr(h, "lightvm_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.lightvm_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
