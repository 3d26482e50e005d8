"""lightvmd's warm CLI server: the process the compiled ``lightvm`` launcher hands its
VM commands to (lightvm/cli/warm.py, docs/cli-startup.md "The launcher").

lightvmd starts it once it serves its own socket and keeps the write end of a pipe whose
read end the server polls: when lightvmd ends, however it ends (kill -9 included), the
server sees EOF, ends, and removes ``STATE/cli.sock``. It is an optimisation only: if it
cannot start or dies, launchers find no socket (or a dead one) and run the Python command.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

STOP_TIMEOUT = 2.0  # s: the server ends on EOF at once; past this it is killed
SOCKET_NAME = "cli.sock"  # in the state dir, next to lightvmd.sock (bin/launcher.c names it too)


class WarmCLI:
    """The server's process and the pipe that bounds its life."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._lifetime: int | None = None  # the pipe's write end: closed = the server ends

    def start(self, state_root: Path) -> None:
        """Start the server on ``state_root``/cli.sock; a failure is logged, not raised."""
        read_end, write_end = os.pipe2(os.O_CLOEXEC)  # CLOEXEC: no QEMU keeps the server alive
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lightvm.cli.warm", str(state_root), str(read_end)],
                pass_fds=[read_end],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for `lightvmd run` is not the server's
            )
        except OSError as exc:
            os.close(write_end)
            self.log(f"warm CLI server not started ({exc}): the lightvm command runs its Python in full")
            return
        finally:
            os.close(read_end)
        self._lifetime = write_end
        self.log(f"warm CLI server on {state_root / SOCKET_NAME} (pid {self.proc.pid})")

    def stats(self) -> dict[str, Any]:
        """For ``daemon status``: the server's pid while it runs, else None."""
        proc = self.proc
        return {"pid": proc.pid if proc is not None and proc.poll() is None else None}

    def stop(self) -> None:
        """End the server (EOF on its pipe) and reap it."""
        if self._lifetime is not None:
            os.close(self._lifetime)
            self._lifetime = None
        if self.proc is None:
            return
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.log(f"warm CLI server (pid {self.proc.pid}) did not end on EOF: killed")
            with contextlib.suppress(OSError):
                self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
        self.proc = None
