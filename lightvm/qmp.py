"""A minimal, synchronous QMP client over a unix socket.

Why not qemu.qmp: it is asyncio-based; importing asyncio and running a loop per
command costs more than the whole control path of a create. We need only the
greeting, ``qmp_capabilities``, commands with ids, and the ability to *send* a
command without waiting for its reply (``cont`` may be answered after a fast guest
has already exited QEMU; docs/qemu-notes.md). Events are kept, not interpreted.

Framing: QEMU writes one JSON object per line (``\\r\\n``); we write one per line.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from lightvm.errors import QMPError
from lightvm.logs import DEBUG, log
from lightvm.util import Deadline, connect_unix, wait_readable

DEFAULT_TIMEOUT = 5.0


class QMPClient:
    """One QMP connection. Not thread-safe; one owner at a time.

    Commands are matched to replies by an ``id`` we choose; replies for ids nobody
    waits for yet are stored, events are appended to :attr:`events`.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._sock.setblocking(False)
        self._buf = b""
        self._next_id = 1
        self._replies: dict[int, dict[str, Any]] = {}
        self.greeting: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        self.closed_by_peer = False
        self._negotiate_id: int | None = None
        self._negotiated = False  # negotiate() consumed the qmp_capabilities reply

    @classmethod
    def connect(cls, path: Path, timeout: float = DEFAULT_TIMEOUT) -> QMPClient:
        """Connect to a QMP unix socket (the peer must already listen).

        :raise QMPError: if the socket does not accept a connection.
        """
        try:
            sock = connect_unix(path, timeout)
        except OSError as exc:
            raise QMPError(f"cannot connect to QMP socket {path}: {exc.strerror or exc}") from exc
        return cls(sock)

    @property
    def negotiate_id(self) -> int | None:
        """The id of the queued ``qmp_capabilities``, if :meth:`send_negotiate` ran."""
        return self._negotiate_id

    @property
    def negotiated(self) -> bool:
        """True once :meth:`negotiate` has waited for (and consumed) the negotiation reply."""
        return self._negotiated

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> QMPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sending --

    def send(self, command: str, arguments: dict[str, Any] | None = None) -> int:
        """Queue ``command`` and return its id, without waiting for the reply.

        :raise QMPError: if the socket is closed.
        """
        cmd_id = self._next_id
        self._next_id += 1
        msg: dict[str, Any] = {"execute": command, "id": cmd_id}
        if arguments:
            msg["arguments"] = arguments
        data = json.dumps(msg).encode() + b"\n"
        log(DEBUG, "lightvm.qmp", "-> %s", data[:-1].decode())
        try:
            # Tiny writes into an empty socket buffer: a blocking sendall with a timeout is fine.
            self._sock.settimeout(DEFAULT_TIMEOUT)
            self._sock.sendall(data)
        except OSError as exc:
            raise QMPError(f"QMP {command}: cannot send: {exc.strerror or exc}") from exc
        finally:
            self._sock.setblocking(False)
        return cmd_id

    def send_fd(self, fd: int, fdname: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Hand ``fd`` to QEMU as ``fdname`` (QMP ``getfd`` with SCM_RIGHTS), e.g. for ``migrate fd:NAME``.

        :raise QMPError: if the fd cannot be sent or QEMU refuses it.
        """
        self.wait(self.send_with_fd("getfd", {"fdname": fdname}, fd), timeout, "getfd")

    def send_with_fd(self, command: str, arguments: dict[str, Any], fd: int) -> int:
        """Queue ``command`` with ``fd`` attached (SCM_RIGHTS) and return its id, e.g.
        ``add-fd``, whose reply names the fd set QEMU put it in (``/dev/fdset/N``: how a
        jailed QEMU, which can open no host file, gets one: lightvm/jail.py).

        :raise QMPError: if it cannot be sent.
        """
        cmd_id = self._next_id
        self._next_id += 1
        data = json.dumps({"execute": command, "arguments": arguments, "id": cmd_id}).encode() + b"\n"
        log(DEBUG, "lightvm.qmp", "-> %s (fd %d attached)", data[:-1].decode(), fd)
        try:
            self._sock.settimeout(DEFAULT_TIMEOUT)
            # The fd rides on the first byte; QEMU attaches it to the command parsed from this message.
            sent = socket.send_fds(self._sock, [data], [fd])
            if sent < len(data):
                self._sock.sendall(data[sent:])
        except OSError as exc:
            raise QMPError(f"QMP {command}: cannot send: {exc.strerror or exc}") from exc
        finally:
            self._sock.setblocking(False)
        return cmd_id

    def send_negotiate(self) -> int:
        """Queue ``qmp_capabilities``; may be sent before the greeting has arrived."""
        self._negotiate_id = self.send("qmp_capabilities")
        return self._negotiate_id

    # -- receiving --

    def pump(self, timeout: float) -> bool:
        """Read whatever arrives within ``timeout`` seconds and sort it.

        Returns False once the peer has closed the connection (QEMU exited).
        """
        if self.closed_by_peer:
            return False
        if not wait_readable(self._sock.fileno(), timeout):
            return True
        while True:
            try:
                chunk = self._sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.closed_by_peer = True
                break
            self._buf += chunk
            if len(chunk) < 65536:
                break
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            if line.strip():
                self._dispatch(line)
        return not self.closed_by_peer

    def _dispatch(self, line: bytes) -> None:
        log(DEBUG, "lightvm.qmp", "<- %s", line.decode(errors="replace"))
        try:
            msg = json.loads(line)
        except ValueError:
            return  # QEMU never sends this; ignore rather than crash on a garbled line
        if not isinstance(msg, dict):
            return
        if "QMP" in msg:
            self.greeting = msg
        elif "event" in msg:
            self.events.append(msg)
        elif isinstance(msg.get("id"), int):
            self._replies[msg["id"]] = msg

    def reply(self, cmd_id: int) -> dict[str, Any] | None:
        """The reply to ``cmd_id`` if it has arrived (does not read the socket)."""
        return self._replies.get(cmd_id)

    def wait(self, cmd_id: int, timeout: float = DEFAULT_TIMEOUT, command: str = "command") -> Any:
        """Wait for the reply to ``cmd_id`` and return its ``return`` value.

        :raise QMPError: on an error reply, a timeout, or QEMU closing the socket.
        """
        deadline = Deadline(timeout)
        while cmd_id not in self._replies:
            if deadline.expired():
                raise QMPError(f"QMP {command}: no reply within {timeout:.1f} s")
            if not self.pump(min(deadline.remaining(), 0.05)) and cmd_id not in self._replies:
                raise QMPError(f"QMP {command}: QEMU closed the connection (did it exit?)")
        msg = self._replies.pop(cmd_id)
        if "error" in msg:
            err = msg["error"]
            desc = err.get("desc", err) if isinstance(err, dict) else err
            raise QMPError(f"QMP {command} failed: {desc}")
        return msg.get("return")

    def execute(self, command: str, arguments: dict[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Send ``command`` and wait for its result.

        :raise QMPError: on an error reply, a timeout, or a closed socket.
        """
        return self.wait(self.send(command, arguments), timeout, command)

    def negotiate(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Leave capabilities-negotiation mode (idempotent if already queued).

        :raise QMPError: if QEMU does not answer.
        """
        if self._negotiate_id is None:
            self.send_negotiate()
        assert self._negotiate_id is not None
        self.wait(self._negotiate_id, timeout, "qmp_capabilities")
        self._negotiated = True


def connect_and_negotiate(path: Path, timeout: float = DEFAULT_TIMEOUT) -> QMPClient:
    """Open a ready-to-use QMP connection to a running QEMU.

    :raise QMPError: if QEMU does not accept or answer within ``timeout``.
    """
    start = time.monotonic()
    client = QMPClient.connect(path, timeout)
    try:
        client.negotiate(max(0.1, timeout - (time.monotonic() - start)))
    except BaseException:
        client.close()
        raise
    return client
