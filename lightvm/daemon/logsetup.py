"""Where lightvmd's log goes: a bounded, rotated file in its state dir, or the journal.

Why: a daemon started with ``lightvm daemon start`` used to append its stderr to
STATE/lightvmd.log forever; a long-lived daemon with a busy pool must not fill the disk.
Three cases, decided at ``daemon run``:

- ``--log-file FILE`` (what ``daemon start`` passes: STATE/lightvmd.log): a
  RotatingFileHandler, :data:`MAX_BYTES` per file and :data:`BACKUPS` old ones
  (lightvmd.log.1, .2), so at most ~4 MiB in all. ``lightvm daemon log`` prints them.
- under systemd (``$JOURNAL_STREAM`` names our stderr): stderr, each line with its
  syslog priority prefix (``<6>``, ``<7>``...) and no time stamp (the journal adds both to
  its record); ``lightvm daemon log`` runs ``journalctl`` for the unit.
- otherwise (a terminal, a test harness capturing stderr): stderr, time-stamped lines as
  before (``lightvmd HH:MM:SS message``).

Levels: lightvmd's own messages (logger ``lightvm.daemon``) at INFO; the toolstack's steps
(``lightvm.toolstack``) with ``daemon run -v``; QMP traffic (``lightvm.qmp``) with ``-vv``.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Any

MAX_BYTES = 1 << 20
BACKUPS = 3
STDERR_FORMAT = "lightvmd %(asctime)s %(message)s"
FILE_FORMAT = "lightvmd %(asctime)s %(levelname)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"
FILE_DATE_FORMAT = "%Y-%m-%d %H:%M:%S"
# syslog priorities of the logging levels, for the journal's <N> prefix (sd-daemon(3))
PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def under_journal() -> bool:
    """True when stderr is the journal: systemd sets JOURNAL_STREAM to its device:inode."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = PRIORITY.get(record.levelno, 6)
        # one journal entry per line: a multi-line message (a traceback) keeps its priority
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).split("\n"))


class _PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler whose files are 0600 from their creation on, the first and each
    one a rotation opens (the log names VMs, configs and hosts, like the state dir's files)."""

    def _open(self) -> Any:
        fd = os.open(self.baseFilename, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        return open(fd, self.mode, encoding=self.encoding, errors=self.errors)


def configure(log_file: Path | None, verbose: int) -> logging.Handler:
    """Send the ``lightvm`` loggers to ``log_file`` (rotated) or stderr; returns the handler
    (the caller removes it when the daemon stops in-process)."""
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handler = _PrivateRotatingFileHandler(log_file, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
        handler.setFormatter(logging.Formatter(FILE_FORMAT, FILE_DATE_FORMAT))
    elif under_journal():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(STDERR_FORMAT, DATE_FORMAT))
    root = logging.getLogger("lightvm")
    root.addHandler(handler)
    root.setLevel(logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)
    logging.getLogger("lightvm.daemon").setLevel(logging.INFO if verbose < 2 else logging.DEBUG)
    root.propagate = False  # an embedding program's root handlers do not print it twice
    return handler


def log_files(log_file: Path) -> list[Path]:
    """The log and its rotated backups that exist, oldest first (what ``daemon log`` prints)."""
    files = [Path(f"{log_file}.{i}") for i in range(BACKUPS, 0, -1)] + [log_file]
    return [f for f in files if f.exists()]


def unconfigure(handler: logging.Handler) -> None:
    """Remove and close what :func:`configure` added (a daemon run in-process ended)."""
    logging.getLogger("lightvm").removeHandler(handler)
    handler.close()
