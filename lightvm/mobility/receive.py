"""The receiving side of a live migration (the protocol: lightvm/mobility/migrate.py).

``lightvm migrate-receive`` (:func:`receive`) runs it over its stdin/stdout, started by
the source over SSH; lightvmd runs :func:`run_incoming` on the API connection that asked
for the migration (lightvm/daemon/operations.py). Either way the VM is prepared like a
restore (lightvm/mobility/restore.py), the stream comes over TCP (or the SSH tunnel),
and the VM stays provisional until the source commits: a closed channel, a QEMU that
dies or a deadline that passes before that removes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from lightvm.errors import LightVMError, QMPError
from lightvm.instance import destroy
from lightvm.mobility.format import CheckpointError
from lightvm.mobility.migrate import MigrationError
from lightvm.mobility.restore import PreparedRestore, prepare_incoming
from lightvm.mobility.stream import stream_in, wait_incoming
from lightvm.toolstack import Toolstack
from lightvm.util import LINE_MAX, Deadline, wait_readable


class Control:
    """The receiver's control channel: JSON lines in from ``rfd`` (EOF = the source is
    gone), out through ``write``. Over SSH it is the receiver's stdin/stdout; in lightvmd
    the API connection that asked for the migration."""

    def __init__(self, rfd: int, write: Callable[[bytes], object], buf: bytes = b"") -> None:
        self.fd = rfd
        self._write = write
        self._buf = buf
        self.eof = False

    def say(self, message: dict[str, Any]) -> None:
        self._write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def rest(self) -> bytes:
        """What was read past the last line (the next request on an API connection)."""
        return self._buf

    def poll(self, timeout: float = 0.0) -> dict[str, Any] | None:
        if b"\n" not in self._buf and not self.eof and wait_readable(self.fd, timeout):
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                chunk = None
            except OSError:
                chunk = b""  # reset by the peer: as good as gone
            if chunk:
                self._buf += chunk
            elif chunk is not None:
                self.eof = True
        if len(self._buf) > LINE_MAX and b"\n" not in self._buf:
            raise MigrationError(f"source sent a line longer than {LINE_MAX} bytes")
        if b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            if not isinstance(msg, dict):
                raise MigrationError("source sent a malformed message")
            return msg
        return None

    def read(self, timeout: float, what: str) -> dict[str, Any]:
        deadline = Deadline(timeout)
        while True:
            msg = self.poll(min(deadline.remaining(), 0.5))
            if msg is not None:
                return msg
            if self.eof:
                raise MigrationError(f"the source went away (waiting for {what})")
            if deadline.expired():
                raise MigrationError(f"no {what} from the source within {timeout:.1f} s")

    def check(self) -> None:
        """:raise MigrationError: if the source closed the channel."""
        self.poll(0.0)
        if self.eof:
            raise MigrationError("the source went away (SSH channel closed) during the migration")


def _stdout_write(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def receive(toolstack: Toolstack, timeout: float = 30.0) -> int:
    """The destination side (``lightvm migrate-receive``), driven over stdin/stdout.

    :raise MigrationError: any failure; nothing of the VM is left on this host.
    """
    control = Control(sys.stdin.fileno(), _stdout_write)
    hello = control.read(timeout, "migration request")
    meta, name, listen = parse_hello(hello)
    prepared = prepare_incoming(toolstack, meta, name, f"<migration of {name}>", timeout)
    try:
        server = socket.create_server((listen, 0))
    except BaseException as exc:
        prepared.abort()
        if isinstance(exc, OSError):
            raise MigrationError(f"{name}: cannot listen on {listen}: {exc.strerror or exc}") from exc
        raise
    control.say({"port": server.getsockname()[1], "receiver": "migrate-receive"})
    run_incoming(toolstack, prepared, server, control, name, timeout)
    return 0


def parse_hello(hello: dict[str, Any]) -> tuple[dict[str, Any], str, str]:
    """(meta, name, listen) of a migration request. :raise MigrationError: malformed."""
    meta, name, listen = hello.get("meta"), hello.get("name"), hello.get("listen")
    if not isinstance(meta, dict) or not isinstance(name, str) or not isinstance(listen, str):
        raise MigrationError("malformed migration request (needs meta, name, listen)")
    return meta, name, listen


def run_incoming(
    toolstack: Toolstack, prepared: PreparedRestore, server: socket.socket, control: Control, name: str, timeout: float
) -> None:
    """The receiving end after its first answer (the port): accept the stream, load it,
    resume the guest, say ``ready``, wait for ``commit``. Closes ``server``.

    :raise MigrationError: any failure; nothing of the VM is left on this host.
    """
    committed = False
    try:
        with server:
            deadline = Deadline(timeout)
            while True:
                ready, _, _ = select.select([server.fileno(), control.fd], [], [], min(0.5, deadline.remaining()))
                if server.fileno() in ready:
                    conn, _ = server.accept()
                    break
                control.check()
                if deadline.expired():
                    raise MigrationError(f"the source did not connect within {timeout:.1f} s")
        with conn:
            stream_in(prepared.machine, conn.fileno())
        t1 = time.perf_counter()
        wait_incoming(prepared.machine, timeout, f"{name}: incoming migration", control.check)
        result = prepared.resume(t1)
        control.say({"ready": True, "resume_ms": result.finish_ms, "heartbeat": result.heartbeat})
        control.read(timeout, "commit")
        prepared.commit()
        committed = True
        control.say({"committed": True})
    except BaseException as exc:
        # (a killed QEMU breaks its QMP socket a moment before it has exited: wait a little)
        qemu_died = not prepared.done and isinstance(exc, (OSError, LightVMError)) and prepared.machine.wait(0.2)
        if prepared.done:  # it ran already: a provisional VM the source did not commit
            if not committed:
                with contextlib.suppress(LightVMError, OSError):
                    destroy(prepared.vmdir, toolstack.state.root)
        else:
            prepared.abort()
        if qemu_died:
            code = prepared.machine.exitcode
            raise MigrationError(f"{name}: the receiving QEMU exited (code {code}) during the migration") from exc
        if isinstance(exc, (OSError, CheckpointError, QMPError)) and not isinstance(exc, MigrationError):
            raise MigrationError(f"{name}: {exc}") from exc
        raise


__all__ = ["Control", "parse_hello", "receive", "run_incoming"]
