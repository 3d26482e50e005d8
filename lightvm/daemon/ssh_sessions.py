"""Kept SSH connections to migration destinations (held by the source's lightvmd).

A one-shot ``lightvm migrate`` pays ~180 ms for paramiko's SSH handshake and ~330 ms
for the destination to start ``lightvm migrate-receive`` and a QEMU. lightvmd on the
source keeps, per destination (:class:`Target`):

* one authenticated paramiko connection (host key checked against known_hosts with
  RejectPolicy, exactly as the one-shot path: an unknown or changed key is refused);
* relay channels: ``REMOTE [--state-dir DIR] migrate-relay`` run over that connection,
  a byte pump between the SSH channel and the destination lightvmd's API socket. On an
  idle relay a migration is one API request (``migrate-in``) answered by a prepared
  ``-incoming defer`` shell (:mod:`lightvm.daemon.restore_pool`): no handshake, no process start,
  no QEMU start on the critical path. A relay is reused once its migration committed;
  a failed one is closed. One spare is kept open, pinged every :data:`KEEPALIVE` s
  (lightvmd closes API connections idle for 60 s).

If no lightvmd runs on the destination the relay exits saying so, and the session falls
back to running ``migrate-receive`` over the kept connection (no handshake, but the
process and QEMU start); it looks again after :data:`RECHECK` s.

A dead connection (cut link, destination rebooted) is noticed when used or pinged and
reopened on the next migration; every failure says which destination and what.
"""

from __future__ import annotations

import contextlib
import shlex
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.errors import LightVMError
from lightvm.mobility.migrate import LineChannel, MigrationError, connect_ssh, receive_argv

KEEPALIVE = 20.0
RECHECK = 30.0
RELAY_START_TIMEOUT = 15.0


@dataclass(frozen=True)
class Target:
    """One destination as the user named it (all of it: another key is another session)."""

    target: str
    port: int = 22
    known_hosts: str | None = None
    identity: str | None = None
    remote_command: str = "lightvm"
    remote_state_dir: str | None = None

    def relay_argv(self) -> list[str]:
        argv = shlex.split(self.remote_command)
        if self.remote_state_dir:
            argv += ["--state-dir", self.remote_state_dir]
        return [*argv, "migrate-relay"]


class Session:
    """One kept SSH connection to a destination and its relay channels."""

    def __init__(self, target: Target, log: Callable[[str], None]) -> None:
        self.target = target
        self.log = log
        self.client: Any = None
        self.connected_at = 0.0
        self.connect_ms = 0.0
        self._idle: list[LineChannel] = []
        self._lock = threading.Lock()
        self._next_id = 1
        self.remote_daemon: dict[str, Any] | None = None  # the destination lightvmd's ping answer
        self._no_daemon_until = 0.0
        self.no_daemon_reason = ""
        self.migrations = 0

    # -- the connection --

    def alive(self) -> bool:
        transport = self.client.get_transport() if self.client is not None else None
        return bool(transport is not None and transport.is_active())

    def connect(self) -> None:
        """(Re)connect if needed. :raise MigrationError: host key refused, auth or network failure."""
        if self.alive():
            return
        self.close()
        t0 = time.perf_counter()
        t = self.target
        self.client = connect_ssh(
            t.target,
            t.port,
            Path(t.known_hosts) if t.known_hosts else None,
            Path(t.identity) if t.identity else None,
        )
        self.client.get_transport().set_keepalive(5)
        self.connect_ms = (time.perf_counter() - t0) * 1000
        self.connected_at = time.time()
        self.log(f"ssh: connected to {t.target}:{t.port} in {self.connect_ms:.0f} ms")

    @property
    def transport(self) -> Any:
        return self.client.get_transport()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for lines in idle:
            with contextlib.suppress(Exception):
                lines.channel.close()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None

    # -- relays --

    def _call(self, lines: LineChannel, op: str, args: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One API request over a relay; the reply's ``result``. :raise MigrationError: error reply."""
        with self._lock:
            req_id = self._next_id
            self._next_id += 1
        lines.send({"v": 1, "id": req_id, "op": op, "args": args})
        reply = lines.receive(timeout, f"lightvmd on {self.target.target} ({op})")
        if reply.get("id") != req_id:
            raise MigrationError(f"lightvmd on {self.target.target} answered out of turn: {str(reply)[:200]}")
        if not reply.get("ok"):
            err = reply.get("error") or {}
            text = err.get("message", err) if isinstance(err, dict) else err
            raise MigrationError(f"lightvmd on {self.target.target}: {text}")
        result = reply.get("result")
        return result if isinstance(result, dict) else {"result": result}

    def _open_relay(self) -> LineChannel | None:
        """A new relay to the destination's lightvmd, pinged; None if none runs there."""
        channel = self.transport.open_session(timeout=10.0)
        channel.exec_command(shlex.join(self.target.relay_argv()))
        lines = LineChannel(channel, "the lightvmd there closed the connection (stopped or killed?)")
        try:
            self.remote_daemon = self._call(lines, "ping", {}, RELAY_START_TIMEOUT)
            return lines
        except MigrationError as exc:
            channel.status_event.wait(2.0)  # the exit status may trail the channel's EOF
            # 3: no lightvmd there; 2: a lightvm without migrate-relay (argparse's usage error)
            no_daemon = channel.exit_status_ready() and channel.recv_exit_status() in (2, 3)
            with contextlib.suppress(Exception):
                channel.close()
            if no_daemon:
                self.no_daemon_reason = str(exc).removeprefix("destination: ")
                self._no_daemon_until = time.monotonic() + RECHECK
                self.remote_daemon = None
                return None
            raise

    def take_relay(self) -> LineChannel | None:
        """An idle relay (a new one if none is idle), or None: no lightvmd on the destination.

        :raise MigrationError: the connection or the relay failed.
        """
        self.connect()
        with self._lock:
            while self._idle:
                lines = self._idle.pop()
                if not (lines.channel.closed or lines.channel.eof_received):
                    return lines
        if time.monotonic() < self._no_daemon_until:
            return None
        return self._open_relay()

    def give_back(self, lines: LineChannel) -> None:
        with self._lock:
            self._idle.append(lines)

    def keep_spare(self) -> None:
        """Open one idle relay if there is none (after a migration: the next one is warm)."""
        with self._lock:
            if self._idle:
                return
        if time.monotonic() < self._no_daemon_until or not self.alive():
            return
        with contextlib.suppress(LightVMError, OSError, EOFError):
            lines = self._open_relay()
            if lines is not None:
                self.give_back(lines)

    def ping_idle(self) -> None:
        """Ping every idle relay (keeps lightvmd's idle timeout away); drop dead ones."""
        with self._lock:
            idle, self._idle = self._idle, []
        for lines in idle:
            try:
                self.remote_daemon = self._call(lines, "ping", {}, 10.0)
                self.give_back(lines)
            except (LightVMError, OSError, EOFError):
                with contextlib.suppress(Exception):
                    lines.channel.close()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            idle = len(self._idle)
        remote = self.remote_daemon or {}
        return {
            "target": self.target.target,
            "port": self.target.port,
            "connected": self.alive(),
            "connect_ms": round(self.connect_ms, 1),
            "idle_relays": idle,
            "remote_lightvmd": remote.get("pid") if remote else None,
            "remote_incoming": (remote.get("incoming") or []) if remote else [],
            "no_daemon": self.no_daemon_reason if time.monotonic() < self._no_daemon_until else "",
            "migrations": self.migrations,
        }


class Sessions:
    """Every kept session of one lightvmd, and the keepalive thread."""

    def __init__(self, log: Callable[[str], None] = lambda _m: None) -> None:
        self.log = log
        self._sessions: dict[Target, Session] = {}
        self._lock = threading.Lock()
        self._locks: dict[Target, threading.Lock] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._keepalive, name="ssh-keepalive", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for s in sessions:
            s.close()

    def get(self, target: Target) -> Session:
        """The session for ``target``, connected. :raise MigrationError: cannot connect."""
        with self._lock:
            session = self._sessions.get(target)
            if session is None:
                session = self._sessions[target] = Session(target, self.log)
                self._locks[target] = threading.Lock()
            lock = self._locks[target]
        with lock:  # one connect at a time per destination
            session.connect()
        return session

    def drop(self, target: Target) -> bool:
        with self._lock:
            session = self._sessions.pop(target, None)
        if session is not None:
            session.close()
        return session is not None

    def stats(self) -> list[dict[str, Any]]:
        with self._lock:
            sessions = list(self._sessions.values())
        return [s.stats() for s in sessions]

    def _keepalive(self) -> None:
        while not self._stop.wait(KEEPALIVE):
            with self._lock:
                sessions = list(self._sessions.values())
            for s in sessions:
                if s.alive():
                    s.ping_idle()


def migrate_warm(
    toolstack: Any,
    session: Session,
    name: str,
    tunnel: bool,
    bandwidth_mib: float,
    downtime_ms: int,
    timeout: float,
    t0: float,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[Any, Callable[[], None]]:
    """Migrate ``name`` over a kept session: through a relay to the destination's lightvmd
    (``migrate-in``), or, with none there, a ``migrate-receive`` over the kept connection.
    Returns the result and the source's teardown, to run after answering
    (:func:`lightvm.mobility.migrate.migrate_over`, ``defer_teardown``).

    :raise MigrationError: any failure; the VM keeps running here, nothing is left there.
    """
    from lightvm.mobility.migrate import migrate_over

    t = session.target
    try:
        relay = session.take_relay()
    except (LightVMError, OSError, EOFError) as exc:
        session.close()  # reconnect next time
        raise MigrationError(f"{name}: migration to {t.target} failed: {exc}; the VM keeps running here") from exc
    used: list[LineChannel] = []

    def open_control(hello: dict[str, Any]) -> tuple[LineChannel, dict[str, Any]]:
        if relay is not None:
            used.append(relay)
            port_msg = session._call(relay, "migrate-in", {**hello, "timeout": timeout}, timeout)
            return relay, port_msg
        channel = session.transport.open_session(timeout=10.0)
        channel.exec_command(shlex.join(receive_argv(t.remote_command, t.remote_state_dir, timeout)))
        lines = LineChannel(channel)
        lines.send(hello)
        return lines, lines.receive(timeout, "the receiving side")

    try:
        result, lines, teardown = migrate_over(
            toolstack,
            name,
            t.target,
            session.transport,
            open_control,
            tunnel,
            bandwidth_mib,
            downtime_ms,
            timeout,
            t0,
            defer_teardown=True,
            progress=progress,
        )
    except MigrationError:
        if relay is not None:  # its conversation is in an unknown state: never reuse it
            with contextlib.suppress(Exception):
                relay.channel.close()
        if not session.alive():
            session.close()
        raise
    session.migrations += 1
    if relay is not None and lines is relay:
        session.give_back(relay)
    else:
        with contextlib.suppress(Exception):
            lines.channel.close()
    result.link = "kept"
    assert teardown is not None
    return result, teardown


__all__ = ["Session", "Sessions", "Target", "migrate_warm"]
