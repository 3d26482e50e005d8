"""Live migration of a VM to another host: paramiko drives the destination's lightvm.

Protocol, one JSON object per line over the SSH exec channel of
``lightvm --state-dir DIR migrate-receive`` on the destination:

1. source -> dest  ``{"meta": <checkpoint header>, "name": NAME, "listen": ADDR}``
   (the header is the one ``lightvm save`` writes: spec, NoXS page, vifs, QEMU args)
2. dest: allocates the VM, recreates its networking (tap + bridge, or user networking
   with its forwards), spawns QEMU with ``-incoming defer`` (QEMU up before the
   stream starts), listens on ADDR:0 -> ``{"port": N}``
3. source: ``migrate-set-parameters`` (max-bandwidth, downtime-limit), then QEMU's
   ``migrate`` to ``tcp:ADDR:N`` (direct), or with ``--tunnel`` to a socketpair bridged
   to a paramiko ``direct-tcpip`` channel (ADDR is then the destination's 127.0.0.1);
   the dest accepts the connection and hands it to QEMU (``migrate-incoming fd:``).
   Pre-copy runs while the guest runs; the source polls ``query-migrate``.
4. dest: stream loaded -> NoXS page identity rewritten (name, uuid, host_time_ns,
   generation bumped), ``cont``, the guest acknowledges the new generation ->
   ``{"ready": true, ...}``
5. source -> ``{"commit": true}``; dest -> ``{"committed": true}``; source destroys its VM.

Failure rules: until the source has the ``committed`` answer, the destination VM is
provisional: the receiver destroys it if the channel closes (SSH cut, source killed),
QEMU dies, or a deadline passes. The source resumes its own VM (``migrate_cancel`` if
the stream still runs, ``cont`` if QEMU had already stopped it) on any failure before
``ready``. Host keys are checked against known_hosts with paramiko's RejectPolicy:
an unknown or changed key refuses the connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.errors import LightVMError, QMPError
from lightvm.machine import Machine
from lightvm.mobility import DEFAULT_BANDWIDTH_MIB, DEFAULT_DOWNTIME_MS
from lightvm.mobility.checkpoint import (
    FDNAME,
    CheckpointError,
    PreparedRestore,
    _running_record,
    header_for,
    prepare_incoming,
    wait_incoming,
    wait_migration,
    want_events,
)
from lightvm.state import VMStatus, status_of
from lightvm.toolstack import Toolstack, _machine_config
from lightvm.util import Deadline, recv_line, wait_readable

STALL_S = 5.0  # no byte sent for this long: the stream is dead (cut link), cancel it


class MigrationError(LightVMError):
    """A live migration failed; the message says where and what happened to the VM."""


@dataclass
class MigrateResult:
    name: str
    destination: str
    total_ms: float  # command start -> VM running on the destination, source destroyed
    ssh_ms: float  # SSH connect + host key check + auth
    prepare_ms: float  # destination ready to receive (QEMU up, networking made)
    migrate_ms: float  # QEMU's total-time: migrate -> completed
    downtime_ms: float  # QEMU's downtime: source stopped -> stream complete
    handover_ms: float  # stream complete -> guest running on the destination
    bytes: int  # ram.transferred (bytes sent)
    tunnel: bool
    receiver: str = "migrate-receive"  # what received: migrate-receive (one-shot), lightvmd-pool, lightvmd-cold
    link: str = "new"  # the SSH connection: new (this command's) or kept (lightvmd's, already open)
    teardown_ms: float = 0.0  # guest running there -> source QEMU gone and its folder removed
    dest_spawn_ms: float = 0.0  # of prepare_ms, in process only: until the destination QEMU is spawned
    dest_qmp_ms: float = 0.0  # then until its QMP answered (QEMU initialised)

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


# ---------------------------------------------------------------------- the channel


class LineChannel:
    """JSON lines over a paramiko channel, every read with a deadline."""

    def __init__(self, channel: Any, closed_hint: str = "connection closed") -> None:
        self.channel = channel
        self.closed_hint = closed_hint  # what an EOF with nothing on stderr means
        self._buf = b""

    def send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        self.channel.settimeout(10.0)
        self.channel.sendall(data)

    def receive(self, timeout: float, what: str) -> dict[str, Any]:
        """The next JSON line; :raise MigrationError: on timeout or a closed channel."""
        try:
            line, self._buf = recv_line(self.channel, self._buf, Deadline(timeout), max_wait=1.0)
        except TimeoutError:
            raise MigrationError(f"destination: no answer ({what}) within {timeout:.1f} s") from None
        except EOFError:
            raise MigrationError(f"destination: {self.stderr() or self.closed_hint} (waiting for {what})") from None
        except OSError as exc:
            raise MigrationError(f"destination: connection lost waiting for {what}: {exc}") from exc
        try:
            msg = json.loads(line)
        except ValueError:
            raise MigrationError(f"destination: unexpected output {line[:200]!r}") from None
        if not isinstance(msg, dict):
            raise MigrationError(f"destination: unexpected output {line[:200]!r}")
        if "error" in msg:
            err = msg["error"]
            text = err.get("message", err) if isinstance(err, dict) else err
            raise MigrationError(f"destination: {text}")
        return msg

    def last_words(self, timeout: float = 1.0) -> str:
        """Why the receiver gave up, if it says so within ``timeout``: its ``error`` line,
        else the last line of its stderr; "" if it said nothing."""
        deadline = Deadline(timeout)
        while not deadline.expired():
            try:
                line, self._buf = recv_line(self.channel, self._buf, Deadline(deadline.remaining()), max_wait=0.2)
            except (TimeoutError, EOFError, OSError):
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and "error" in msg:
                err = msg["error"]
                return str(err.get("message", err) if isinstance(err, dict) else err)
        return self.stderr()

    def stderr(self) -> str:
        """What the remote command said on stderr (its one-line error), if anything."""
        chunks = []
        with contextlib.suppress(OSError):
            self.channel.settimeout(2.0)
            deadline = Deadline(2.0)
            while not deadline.expired():
                if self.channel.recv_stderr_ready():
                    chunks.append(self.channel.recv_stderr(65536))
                elif self.channel.exit_status_ready():
                    if not self.channel.recv_stderr_ready():
                        break
                else:
                    time.sleep(0.01)
        text = b"".join(chunks).decode(errors="replace").strip()
        return text.splitlines()[-1] if text else ""


def _split_target(target: str) -> tuple[str | None, str]:
    user, _, hostname = target.rpartition("@")
    return (user or None), hostname


def connect_ssh(target: str, port: int, known_hosts: Path | None, identity: Path | None, timeout: float = 10.0) -> Any:
    """An authenticated paramiko SSHClient; host keys verified, unknown keys rejected.

    :raise MigrationError: unknown or changed host key, authentication or network failure.
    """
    import paramiko

    user, hostname = _split_target(target)
    client = paramiko.SSHClient()
    try:
        if known_hosts is not None:
            client.load_host_keys(str(known_hosts))
        else:
            client.load_system_host_keys()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            hostname,
            port=port,
            username=user,
            key_filename=str(identity) if identity else None,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            allow_agent=identity is None,
            look_for_keys=identity is None,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise MigrationError(
            f"{hostname}: host key mismatch ({exc.key.get_name()} key differs from known_hosts): refusing to migrate"
        ) from exc
    except paramiko.SSHException as exc:
        client.close()
        if "not found in known_hosts" in str(exc):
            raise MigrationError(f"{hostname}: host key not in known_hosts: refusing to migrate ({exc})") from exc
        raise MigrationError(f"{hostname}: SSH failed: {exc}") from exc
    except OSError as exc:
        client.close()
        raise MigrationError(f"{hostname}:{port}: cannot connect: {exc.strerror or exc}") from exc
    return client


# ---------------------------------------------------------------------- source


class _Tunnel:
    """QEMU's outgoing stream through the SSH connection: socketpair <-> direct-tcpip channel."""

    def __init__(self, transport: Any, dest: tuple[str, int]) -> None:
        self.channel = transport.open_channel("direct-tcpip", dest, ("127.0.0.1", 0), timeout=10.0)
        self.qemu_end, self._ours = socket.socketpair()
        self.error: str | None = None
        self._thread = threading.Thread(target=self._pump, name="migrate-tunnel", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            self._ours.settimeout(1.0)
            while True:
                try:
                    data = self._ours.recv(1 << 18)
                except TimeoutError:
                    if self.channel.closed:
                        self.error = "SSH channel closed"
                        return
                    continue
                if not data:
                    break
                self.channel.sendall(data)
            self.channel.shutdown_write()
        except (OSError, EOFError) as exc:
            self.error = str(exc) or type(exc).__name__
        finally:
            self._ours.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.qemu_end.close()
        self._thread.join(5.0)
        with contextlib.suppress(Exception):
            self.channel.close()


def migrate(
    toolstack: Toolstack,
    name: str,
    target: str,
    port: int = 22,
    known_hosts: Path | None = None,
    identity: Path | None = None,
    remote_command: str = "lightvm",
    remote_state_dir: str | None = None,
    tunnel: bool = False,
    bandwidth_mib: float = DEFAULT_BANDWIDTH_MIB,
    downtime_ms: int = DEFAULT_DOWNTIME_MS,
    timeout: float = 30.0,
    log: Callable[[str], None] | None = None,
) -> MigrateResult:
    """Live-migrate VM ``name`` to ``[user@]host``; destroy it here once it runs there.

    One-shot: a new SSH connection, and ``lightvm migrate-receive`` started on the
    destination for this migration (lightvmd's kept connections: :mod:`lightvm.daemon.ssh_sessions`).

    :raise MigrationError: any failure; the VM keeps running here and nothing is left there.
    :raise NotFoundError: no such VM. :raise StateError: the VM is not running.
    """
    t0 = time.perf_counter()
    _running_record(toolstack.state.get(name))  # fail fast, before any SSH
    client = connect_ssh(target, port, known_hosts, identity)
    t_ssh = time.perf_counter()
    try:
        transport = client.get_transport()

        def open_control(hello: dict[str, Any]) -> tuple[LineChannel, dict[str, Any]]:
            argv = receive_argv(remote_command, remote_state_dir, timeout)
            channel = transport.open_session(timeout=10.0)
            channel.exec_command(shlex.join(argv))
            lines = LineChannel(channel)
            lines.send(hello)
            return lines, lines.receive(timeout, "the receiving side")

        result, lines, _ = migrate_over(
            toolstack, name, target, transport, open_control, tunnel, bandwidth_mib, downtime_ms, timeout, t0
        )
        lines.channel.close()
    finally:
        client.close()
    result.ssh_ms = (t_ssh - t0) * 1000
    result.prepare_ms -= result.ssh_ms
    return result


def receive_argv(remote_command: str, remote_state_dir: str | None, timeout: float) -> list[str]:
    argv = shlex.split(remote_command)
    if remote_state_dir:
        argv += ["--state-dir", remote_state_dir]
    return [*argv, "migrate-receive", "--timeout", str(timeout)]


OpenControl = Callable[[dict[str, Any]], tuple[LineChannel, dict[str, Any]]]


def migrate_over(
    toolstack: Toolstack,
    name: str,
    target: str,
    transport: Any,
    open_control: OpenControl,
    tunnel: bool,
    bandwidth_mib: float,
    downtime_ms: int,
    timeout: float,
    t0: float,
    defer_teardown: bool = False,
) -> tuple[MigrateResult, LineChannel, Callable[[], None] | None]:
    """The migration over an SSH ``transport``: ``open_control(hello)`` reaches a receiver
    on the destination (a new ``migrate-receive``, or lightvmd through a kept relay) and
    returns its control channel with the receiver's first answer (``{"port": N}``).
    Returns the result, that channel (usable again once the receiver has committed), and
    with ``defer_teardown`` the source's teardown for the caller to run after answering
    (the guest runs on the destination and the source QEMU is stopped for good once the
    destination committed: removing the source's QEMU and folder is bookkeeping; lightvmd
    answers first, as it does for a create's record).

    :raise MigrationError: any failure; the VM keeps running here and nothing is left there.
    """
    vmdir = toolstack.state.get(name)
    record = _running_record(vmdir)
    paused = status_of(vmdir, record) is VMStatus.PAUSED
    meta = header_for(record, paused)
    machine = Machine.adopt(_machine_config(vmdir, record), record.pid or 0, record.pid_start, paused=paused)
    stream: _Tunnel | None = None
    lines: LineChannel | None = None
    started = False
    committed = False
    try:
        peer = transport.getpeername()[0]
        listen = "127.0.0.1" if tunnel else peer
        lines, port_msg = open_control({"meta": meta, "name": name, "listen": listen})
        dest_port = int(port_msg["port"])
        receiver = str(port_msg.get("receiver", "migrate-receive"))
        t_prepared = time.perf_counter()
        qmp = machine.qmp
        qmp.execute(
            "migrate-set-parameters",
            {"max-bandwidth": int(bandwidth_mib * (1 << 20)), "downtime-limit": downtime_ms},
            timeout=5.0,
        )
        if tunnel:
            stream = _Tunnel(transport, (listen, dest_port))
            qmp.send_fd(stream.qemu_end.fileno(), FDNAME)
            stream.qemu_end.close()
            uri = f"fd:{FDNAME}"
        else:
            uri = f"tcp:{peer}:{dest_port}"
        want_events(machine)
        qmp.execute("migrate", {"uri": uri}, timeout=5.0)
        started = True
        info = wait_migration(machine, timeout, "migration", stall=STALL_S)
        t_done = time.perf_counter()
        ready = lines.receive(timeout, "the guest to run on the destination")
        if not ready.get("ready"):
            raise MigrationError(f"destination: unexpected answer {ready}")
        t_ready = time.perf_counter()
        lines.send({"commit": True})
        lines.receive(10.0, "the commit")
        committed = True
        if not defer_teardown:
            # The guest runs there: the source QEMU (stopped, postmigrate) has nothing left
            # to keep; SIGKILL is ~5 ms faster than `quit` and destroy only removes files.
            machine.kill()
    except BaseException as exc:
        if committed:  # only the kill failed: the VM runs there; destroy below cleans up
            pass
        else:
            _resume_source(machine, started, paused)  # first: the VM runs on here
            if isinstance(exc, QMPError) and lines is not None:
                # The stream broke: did the receiver say why (its QEMU died, it gave up)?
                said = lines.last_words(1.0)
                if said:
                    exc = MigrationError(f"{exc} (destination: {said})")
                elif _session_gone(lines.channel):
                    exc = MigrationError(f"{exc} (the SSH session to {target} is gone)")
            if lines is not None:
                with contextlib.suppress(Exception):
                    lines.channel.close()
            if isinstance(exc, MigrationError):
                raise MigrationError(f"{name}: migration to {target} failed: {exc}; the VM keeps running here") from exc
            if isinstance(exc, (LightVMError, OSError, EOFError)):
                raise MigrationError(
                    f"{name}: migration to {target} failed: {exc or type(exc).__name__}; the VM keeps running here"
                ) from exc
            raise
    finally:
        if stream is not None:
            stream.close()
        machine.disconnect()
        if machine.process is not None:
            machine.process.close()
    assert lines is not None
    assert lines is not None
    teardown = None
    if defer_teardown:
        teardown = lambda: toolstack.destroy(name)  # noqa: E731
    else:
        toolstack.destroy(name)
    t_end = time.perf_counter()
    ram = info.get("ram", {}) if isinstance(info.get("ram"), dict) else {}
    return (
        MigrateResult(
            name=name,
            destination=target,
            total_ms=(t_end - t0) * 1000,
            ssh_ms=0.0,
            prepare_ms=(t_prepared - t0) * 1000,
            migrate_ms=float(info.get("total-time", (t_done - t_prepared) * 1000)),
            downtime_ms=float(info.get("downtime", 0)),
            handover_ms=(t_ready - t_done) * 1000,
            bytes=int(ram.get("transferred", 0)),
            tunnel=tunnel,
            receiver=receiver,
            teardown_ms=(t_end - t_ready) * 1000,
        ),
        lines,
        teardown,
    )


def _session_gone(channel: Any) -> bool:
    """True if the destination's side of the control channel has closed (within a moment)."""
    deadline = Deadline(1.0)
    while not deadline.expired():
        if channel.closed or channel.exit_status_ready() or channel.eof_received:
            return True
        time.sleep(0.02)
    return False


def _resume_source(machine: Machine, started: bool, paused: bool) -> None:
    """Leave the source VM as it was: cancel a running stream, ``cont`` a stopped guest."""
    with contextlib.suppress(LightVMError, OSError):
        qmp = machine.qmp
        if started:
            with contextlib.suppress(QMPError):
                qmp.execute("migrate_cancel", timeout=2.0)

            def settled() -> bool:
                info = qmp.execute("query-migrate", timeout=2.0)
                return str(info.get("status", "")) not in ("active", "cancelling", "device", "pre-switchover")

            deadline = Deadline(5.0)
            while not settled() and not deadline.expired():
                qmp.pump(0.01)
        if not paused and machine.query_status() != "running":
            qmp.execute("cont", timeout=5.0)


# ---------------------------------------------------------------------- destination


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
            prepared.machine.qmp.send_fd(conn.fileno(), FDNAME)
        want_events(prepared.machine)
        prepared.machine.qmp.execute("migrate-incoming", {"uri": f"fd:{FDNAME}"}, timeout=5.0)
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
                    toolstack._destroy_dir(prepared.vmdir)
        else:
            prepared.abort()
        if qemu_died:
            code = prepared.machine.exitcode
            raise MigrationError(f"{name}: the receiving QEMU exited (code {code}) during the migration") from exc
        if isinstance(exc, (OSError, CheckpointError, QMPError)) and not isinstance(exc, MigrationError):
            raise MigrationError(f"{name}: {exc}") from exc
        raise


# ---------------------------------------------------------------------- same host, no SSH


def migrate_local(
    source: Toolstack,
    name: str,
    destination: Toolstack,
    bandwidth_mib: float = DEFAULT_BANDWIDTH_MIB,
    downtime_ms: int = DEFAULT_DOWNTIME_MS,
    timeout: float = 30.0,
) -> MigrateResult:
    """Live-migrate VM ``name`` from one state dir to another of this host, in process,
    over a socketpair: the migration proper without SSH (what the benchmark measures).

    Same steps and failure rules as :func:`migrate`. Published host ports cannot be
    bound twice on one host: use it for guests without forwards.

    :raise MigrationError: any failure; the VM keeps running in ``source``.
    """
    t0 = time.perf_counter()
    vmdir = source.state.get(name)
    record = _running_record(vmdir)
    paused = status_of(vmdir, record) is VMStatus.PAUSED
    prepared = prepare_incoming(destination, header_for(record, paused), name, f"<migration of {name}>", timeout)
    t_prepared = time.perf_counter()
    machine = Machine.adopt(_machine_config(vmdir, record), record.pid or 0, record.pid_start, paused=paused)
    started = False
    try:
        # One host: a socketpair, each end handed to one QEMU (no TCP, no accept), the
        # destination listening before the source sends.
        ours, theirs = socket.socketpair()
        with ours, theirs:
            prepared.machine.qmp.send_fd(theirs.fileno(), FDNAME)
            want_events(prepared.machine)
            prepared.machine.qmp.execute("migrate-incoming", {"uri": f"fd:{FDNAME}"}, timeout=5.0)
            qmp = machine.qmp
            qmp.execute(
                "migrate-set-parameters",
                {"max-bandwidth": int(bandwidth_mib * (1 << 20)), "downtime-limit": downtime_ms},
                timeout=5.0,
            )
            qmp.send_fd(ours.fileno(), FDNAME)
            want_events(machine)
            qmp.execute("migrate", {"uri": f"fd:{FDNAME}"}, timeout=5.0)
            started = True
        info = wait_migration(machine, timeout, "migration", stall=STALL_S)
        t_done = time.perf_counter()
        wait_incoming(prepared.machine, timeout, f"{name}: incoming migration")
        prepared.resume(t_done)
        t_ready = time.perf_counter()
    except BaseException as exc:
        if prepared.done:
            with contextlib.suppress(LightVMError):
                destination.destroy(name)
        else:
            prepared.abort()
        _resume_source(machine, started, paused)
        machine.disconnect()
        if machine.process is not None:
            machine.process.close()
        if isinstance(exc, (LightVMError, OSError)):
            raise MigrationError(f"{name}: local migration failed: {exc}; the VM keeps running") from exc
        raise
    with contextlib.suppress(LightVMError, OSError):
        machine.kill()  # postmigrate: nothing to keep; faster than `quit` (destroy removes the rest)
    source.destroy(name)
    t_end = time.perf_counter()
    ram = info.get("ram", {}) if isinstance(info.get("ram"), dict) else {}
    return MigrateResult(
        name=name,
        destination=str(destination.state.root),
        total_ms=(t_end - t0) * 1000,
        ssh_ms=0.0,
        prepare_ms=(t_prepared - t0) * 1000,
        migrate_ms=float(info.get("total-time", 0)),
        downtime_ms=float(info.get("downtime", 0)),
        handover_ms=(t_ready - t_done) * 1000,
        bytes=int(ram.get("transferred", 0)),
        tunnel=False,
        receiver="in-process",
        link="none",
        teardown_ms=(t_end - t_ready) * 1000,
        dest_spawn_ms=prepared.steps.get("spawned", 0.0),
        dest_qmp_ms=prepared.steps.get("qmp", 0.0) - prepared.steps.get("spawned", 0.0),
    )
