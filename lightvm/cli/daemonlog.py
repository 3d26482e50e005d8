"""``lightvm daemon log [-f] [-n N]``: print lightvmd's log, wherever lightvm/daemon/logsetup.py put it.

- STATE/lightvmd.log and its rotated backups (a daemon from ``lightvm daemon start``):
  printed oldest first; ``-f`` then follows the file across rotations (the name is reopened
  when it names another inode or shrank), until Ctrl-C.
- the journal (a daemon whose cgroup is a systemd service, e.g. from ``lightvm daemon
  unit``): ``journalctl --unit UNIT`` (``-f`` and ``-n`` passed on).
- neither (``daemon run`` outside systemd logs to its own stderr): an error saying so.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Any, TextIO

from lightvm.cli.backend import state_root
from lightvm.errors import StateError

POLL_S = 0.2
JOURNALCTL_TIMEOUT = 60.0


def register(dsub: Any, parent: argparse.ArgumentParser) -> None:
    """Add ``daemon log`` to the ``daemon`` subcommands."""
    q = dsub.add_parser(
        "log",
        parents=[parent],
        help="print lightvmd's log (-f: follow it)",
        description="Print the log of the state dir's lightvmd: STATE/lightvmd.log and its rotated "
        "backups (a daemon from `lightvm daemon start`), or the journal of its systemd unit.",
    )
    q.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C to leave)")
    q.add_argument("-n", "--lines", type=int, default=None, metavar="N", help="only the last N lines")
    q.set_defaults(func=cmd_daemon_log)


def systemd_unit(pid: int) -> str | None:
    """The systemd service ``pid`` runs in (from its cgroup path), or None."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        for part in reversed(line.split(":", 2)[-1].split("/")):
            if part.endswith(".service"):
                return part
    return None


def _emit(line: str, as_json: bool) -> None:
    print(json.dumps({"line": line}) if as_json else line, flush=True)


def cmd_daemon_log(args: argparse.Namespace) -> int:
    from lightvm.daemon.logsetup import log_files
    from lightvm.daemon.server import LOG_NAME, read_pid

    root = state_root(args)
    log = root / LOG_NAME
    files = log_files(log)
    if not files:
        running = read_pid(root)
        unit = systemd_unit(running[0]) if running else None
        if unit is not None:
            return _journal(unit, args)
        if running:
            raise StateError(
                f"lightvmd (pid {running[0]}) on {root} logs to its own stderr (`daemon run` outside "
                "systemd); `lightvm daemon start` logs to STATE/lightvmd.log"
            )
        raise StateError(f"no lightvmd log in {root}: start one with `lightvm daemon start`")
    if args.lines is not None and args.lines < 0:
        raise StateError("daemon log -n: give a count of lines >= 0")
    last: deque[str] | None = deque(maxlen=args.lines) if args.lines is not None else None

    def take(line: str) -> None:
        if last is not None:
            last.append(line.rstrip("\n"))
        else:
            _emit(line.rstrip("\n"), args.json)

    for path in files[:-1]:  # the rotated backups, oldest first
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    take(line)
        except FileNotFoundError:
            continue  # rotated away while we read: its lines are in the next file
    # the live file: read to its end, then (-f) follow from exactly there, so that a line
    # written meanwhile is neither lost nor printed twice
    current = open(files[-1], encoding="utf-8", errors="replace")  # noqa: SIM115 (_follow reopens it)
    try:
        for line in current:
            take(line)
        for line in last or ():
            _emit(line, args.json)
        if args.follow:
            try:
                _follow(log, current, args.json)
            except KeyboardInterrupt:
                return 0  # Ctrl-C is how -f ends
    finally:
        current.close()
    return 0


def _follow(path: Path, f: TextIO, as_json: bool) -> None:
    """Print what is appended to ``path`` from ``f``'s position on (``f``: ``path`` opened and
    read to its end), following it when lightvmd rotates it (RotatingFileHandler renames it
    and opens a new one). Ends only by an exception (Ctrl-C, SIGTERM); whichever file is
    open then is closed here."""
    partial = ""
    try:
        while True:
            data = f.read()
            if data:
                lines = (partial + data).split("\n")
                partial = lines.pop()
                for line in lines:
                    _emit(line, as_json)
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:
                st = None  # between the rename and the new file
            if st is not None and (st.st_ino != os.fstat(f.fileno()).st_ino or st.st_size < f.tell()):
                f.close()
                f = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 (reopened on rotation)
                continue
            time.sleep(POLL_S)
    finally:
        f.close()


def _journal(unit: str, args: argparse.Namespace) -> int:
    journalctl = shutil.which("journalctl")
    if journalctl is None:
        raise StateError(f"lightvmd runs as {unit}, which logs to the journal, but journalctl is not installed")
    argv = [journalctl, "--unit", unit, "--no-pager", "--output", "json" if args.json else "short-iso"]
    if args.lines is not None:
        argv += ["--lines", str(args.lines)]
    if not args.follow:
        done = subprocess.run(argv, timeout=JOURNALCTL_TIMEOUT, check=False)
        return done.returncode
    proc = subprocess.Popen([*argv, "--follow"], stdin=subprocess.DEVNULL)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5.0)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)
