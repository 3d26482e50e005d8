"""Live migration of a VM to another host: paramiko drives the destination's lightvm.

This module is the source side and the SSH and line channels; the receiving side is
lightvm/mobility/receive.py.

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
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.errors import LightVMError, QMPError
from lightvm.instance import attach
from lightvm.machine import Machine
from lightvm.mobility import DEFAULT_BANDWIDTH_MIB, DEFAULT_DOWNTIME_MS
from lightvm.mobility.format import header_for
from lightvm.mobility.restore import prepare_incoming
from lightvm.mobility.stream import outgoing, stream_in, stream_out, wait_incoming, wait_migration
from lightvm.resume import resume_stamped
from lightvm.toolstack import Toolstack
from lightvm.util import Deadline, recv_line

STALL_S = 5.0  # no byte sent for this long: the stream is dead (cut link), cancel it
ABORT_JOIN_S = 1.0  # a failed migration's tunnel pump gets this long to stop by itself


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

    def receive(self, timeout: float, what: str, check: Callable[[], None] | None = None) -> dict[str, Any]:
        """The next JSON line; ``check`` runs every second of waiting and may raise to give up.

        :raise MigrationError: on timeout or a closed channel.
        """
        try:
            line, self._buf = recv_line(self.channel, self._buf, Deadline(timeout), max_wait=1.0, on_idle=check)
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
        self._transport = transport
        self.channel = transport.open_channel("direct-tcpip", dest, ("127.0.0.1", 0), timeout=10.0)
        # A send that waits this long for the peer's window (a cut link: paramiko would wait
        # forever) fails the pump, which closes QEMU's end: the migration fails, not hangs.
        self.channel.settimeout(STALL_S)
        self.qemu_end, self._ours = socket.socketpair()
        self.error: str | None = None
        self._sending = False  # a chunk from QEMU is on its way into the SSH connection
        self._moved = time.monotonic()  # when the pump last got bytes into it
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
                # send(), not sendall(): every piece that goes through is progress that
                # raise_if_stalled() can see, even at a few KiB/s.
                self._moved, self._sending = time.monotonic(), True
                while data:
                    data = data[self.channel.send(data) :]
                    self._moved = time.monotonic()
                self._sending = False
            self.channel.shutdown_write()
        except (OSError, EOFError) as exc:
            self.error = str(exc) or type(exc).__name__
        finally:
            self._ours.close()

    def raise_if_stalled(self) -> None:
        """:raise MigrationError: the pump has held bytes it could not send for STALL_S.

        QEMU may finish writing the whole stream into the socket and SSH buffers before a
        cut link shows anywhere; the source then waits for the destination's answer while
        its guest stands still. This is what notices that nothing moves any more.
        """
        if self._sending and time.monotonic() - self._moved > STALL_S:
            raise MigrationError(
                f"the stream stalled in the SSH connection: nothing sent for {STALL_S:.1f} s "
                "(is the network to the destination down?)"
            )

    def abort(self) -> bool:
        """Stop the pump after a failed migration; True if that took closing the SSH connection.

        On a cut link the pump is not stuck on the channel's window (its timeout above) but
        inside paramiko's transport, whose write retries a full socket for ever while
        holding the transport's write lock; every other channel's close (the control
        channel's, this one's) would then wait for ever too (measured: a veth cut during a
        tunnelled migration hung the command). Only closing the transport frees it.
        """
        with contextlib.suppress(OSError):
            self.qemu_end.close()
        with contextlib.suppress(OSError):
            self._ours.shutdown(socket.SHUT_RDWR)
        self._thread.join(ABORT_JOIN_S)
        if not self._thread.is_alive():
            return False
        with contextlib.suppress(Exception):
            self._transport.close()
        self._thread.join(ABORT_JOIN_S)
        return True

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
    tunnel: bool = True,
    bandwidth_mib: float = DEFAULT_BANDWIDTH_MIB,
    downtime_ms: int = DEFAULT_DOWNTIME_MS,
    timeout: float = 30.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> MigrateResult:
    """Live-migrate VM ``name`` to ``[user@]host``; destroy it here once it runs there.

    One-shot: a new SSH connection, and ``lightvm migrate-receive`` started on the
    destination for this migration (lightvmd's kept connections: :mod:`lightvm.daemon.ssh_sessions`).

    :raise MigrationError: any failure; the VM keeps running here and nothing is left there.
    :raise NotFoundError: no such VM. :raise StateError: the VM is not running.
    """
    t0 = time.perf_counter()
    outgoing(toolstack.state, name, "migrate")  # fail fast, before any SSH
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
            toolstack,
            name,
            target,
            transport,
            open_control,
            tunnel,
            bandwidth_mib,
            downtime_ms,
            timeout,
            t0,
            progress=progress,
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
    progress: Callable[[dict[str, Any]], None] | None = None,
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
    vmdir, record, paused = outgoing(toolstack.state, name, "migrate")
    meta = header_for(record, paused)
    machine = attach(vmdir, record, paused)
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
        _set_limits(machine, bandwidth_mib, downtime_ms)
        if tunnel:
            stream = _Tunnel(transport, (listen, dest_port))
            stream_out(machine, fd=stream.qemu_end.fileno())
            stream.qemu_end.close()
        else:
            stream_out(machine, uri=f"tcp:{peer}:{dest_port}")
        started = True
        info = wait_migration(machine, timeout, "migration", stall=STALL_S, progress=progress)
        t_done = time.perf_counter()
        check = stream.raise_if_stalled if stream is not None else None
        ready = lines.receive(timeout, "the guest to run on the destination", check)
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
            _resume_source(machine, started, paused, record.noxs_path)  # first: the VM runs on here
            wedged = stream is not None and stream.abort()
            if wedged and isinstance(exc, (LightVMError, OSError, EOFError)):
                exc = MigrationError(f"{exc} (the SSH connection to {target} stopped moving data)")
            elif isinstance(exc, QMPError) and lines is not None:
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
        machine.release()
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


def _set_limits(machine: Machine, bandwidth_mib: float, downtime_ms: int) -> None:
    """The stream's bandwidth and the downtime QEMU may take to converge (before ``migrate``)."""
    machine.qmp.execute(
        "migrate-set-parameters",
        {"max-bandwidth": int(bandwidth_mib * (1 << 20)), "downtime-limit": downtime_ms},
        timeout=5.0,
    )


def _session_gone(channel: Any) -> bool:
    """True if the destination's side of the control channel has closed (within a moment)."""
    deadline = Deadline(1.0)
    while not deadline.expired():
        if channel.closed or channel.exit_status_ready() or channel.eof_received:
            return True
        time.sleep(0.02)
    return False


def _resume_source(machine: Machine, started: bool, paused: bool, noxs_path: str) -> None:
    """Leave the source VM as it was: cancel a running stream, ``cont`` a stopped guest (its page
    stamped first: its clock stood still while stopped)."""
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
            resume_stamped(machine, noxs_path)


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
    vmdir, record, paused = outgoing(source.state, name, "migrate")
    prepared = prepare_incoming(destination, header_for(record, paused), name, f"<migration of {name}>", timeout)
    t_prepared = time.perf_counter()
    machine = attach(vmdir, record, paused)
    started = False
    try:
        # One host: a socketpair, each end handed to one QEMU (no TCP, no accept), the
        # destination listening before the source sends.
        ours, theirs = socket.socketpair()
        with ours, theirs:
            stream_in(prepared.machine, theirs.fileno())
            _set_limits(machine, bandwidth_mib, downtime_ms)
            stream_out(machine, fd=ours.fileno())
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
        _resume_source(machine, started, paused, record.noxs_path)
        machine.release()
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
