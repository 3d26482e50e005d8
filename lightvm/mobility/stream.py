"""QEMU's migration stream: out of a running VM (save, migrate) and into an
``-incoming defer`` QEMU (restore, the receiving end of a migration), and the waits
for both to finish.

A stream goes to or comes from a file descriptor handed to QEMU over QMP (``getfd``,
then ``fd:`` URIs; ``tcp:`` for a direct migration). MIGRATION events are asked for
first, so the polls below wake when the state changes instead of at their next back-off
step (a few ms of a ~5 ms migration).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hmac
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightvm.errors import QMPError, StateError
from lightvm.machine import Machine
from lightvm.state import StateDir, VMDir, VMRecord, VMStatus, status_of
from lightvm.util import Deadline

FDNAME = "lvckpt"
MIGRATE_POLL = 0.0005
FEED_CHUNK = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def outgoing(state: StateDir, name: str, verb: str = "save") -> tuple[VMDir, VMRecord, bool]:
    """The VM ``name`` whose stream is to go out: its folder, record, and whether it is paused.

    :raise NotFoundError: no such VM.
    :raise StateError: it is not running or paused (``verb`` says what was refused).
    """
    vmdir = state.get(name)
    record = vmdir.read()
    if record is None:
        raise StateError(f"{vmdir.name}: incomplete VM (its create was interrupted); `lightvm destroy` it")
    status = status_of(vmdir, record)
    if status not in (VMStatus.RUNNING, VMStatus.PAUSED):
        raise StateError(f"{vmdir.name}: cannot {verb} a VM that is {status.value} (needs running or paused)")
    return vmdir, record, status is VMStatus.PAUSED


def want_events(machine: Machine, ignore_shared: bool = False) -> None:
    """Ask QEMU for MIGRATION events (queued, reply not awaited): the polls in
    :func:`wait_migration` and :func:`wait_incoming` then wake when the state changes
    instead of at their next back-off step (a few ms of a ~5 ms migration).

    ``ignore_shared`` sets ``x-ignore-shared`` (both ends of a template's stream: RAM
    blocks mapped ``share=on`` are left out, the stream holds device state only;
    lightvm/mobility/template.py), and its absence clears it: a capability stays set in a
    QEMU for its life, so a VM started from a template (set on its incoming side) saved or
    migrated later would write a stream without its shared blocks (the NoXS region) and
    marked "ignore-shared", which a plain restore refuses ("Capability x-ignore-shared is
    off, but received capability is on")."""
    caps = [
        {"capability": "events", "state": True},
        {"capability": "x-ignore-shared", "state": ignore_shared},
    ]
    machine.qmp.send("migrate-set-capabilities", {"capabilities": caps})


def stream_out(machine: Machine, fd: int | None = None, uri: str | None = None, ignore_shared: bool = False) -> None:
    """Start the migration of ``machine``'s VM into ``fd`` (QEMU takes its own copy) or to ``uri``."""
    if fd is not None:
        machine.qmp.send_fd(fd, FDNAME)
        uri = f"fd:{FDNAME}"
    want_events(machine, ignore_shared)
    machine.qmp.execute("migrate", {"uri": uri}, timeout=5.0)


def stream_in(machine: Machine, fd: int, ignore_shared: bool = False) -> None:
    """Have ``machine``, an ``-incoming defer`` QEMU, load a migration stream from ``fd``
    (QEMU takes its own copy); :func:`wait_incoming` waits for the end of it."""
    machine.qmp.send_fd(fd, FDNAME)
    want_events(machine, ignore_shared)
    machine.qmp.execute("migrate-incoming", {"uri": f"fd:{FDNAME}"}, timeout=5.0)


class VerifiedFeed:
    """Feed a checkpoint's stream to an ``-incoming defer`` QEMU through a pipe, computing
    the file's digest on the very bytes QEMU reads (a file swapped or rewritten meanwhile
    cannot pass one version to the check and another to QEMU).

    QEMU loads into a VM it keeps paused (restore spawns it with ``-S``), so the guest
    runs nothing before :meth:`verify` has compared the digest with the trailer's; a
    mismatch is the error even when QEMU failed first on the corrupted bytes (it closes
    the pipe: the rest of the file is hashed without it).
    """

    def __init__(self, path: Path, fd: int, layout: Any) -> None:
        from lightvm.mobility.format import Sealer

        self.path, self.fd, self.layout = path, fd, layout
        self.sealer = Sealer(layout.key)
        self.error: BaseException | None = None
        self.fed = 0  # bytes of the stream handed to QEMU so far (written by the feed's thread)
        self.started = time.monotonic()
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError):  # fewer wake-ups of QEMU's reader; 64 KiB works too
            fcntl.fcntl(self.write_fd, F_SETPIPE_SZ, FEED_CHUNK)
        self.thread = threading.Thread(target=self._run, name="lightvm-ckpt-feed", daemon=True)

    @classmethod
    def open(cls, path: Path, layout: Any) -> VerifiedFeed:
        """The feed of checkpoint ``path`` (a regular file only: util.open_regular); the
        file's fd is the feed's from here on, closed here if the feed cannot be made."""
        from lightvm.util import open_regular

        fd = open_regular(path)
        try:
            return cls(path, fd, layout)
        except BaseException:
            os.close(fd)
            raise

    def start(self, machine: Machine, ignore_shared: bool = False) -> None:
        """Hand QEMU the pipe's read end and start feeding it. The feed owns the file's fd
        from its construction on: closed when the whole file was read, or here on failure.
        ``ignore_shared``: a template's device-state stream (:func:`want_events`)."""
        try:
            stream_in(machine, self.read_fd, ignore_shared)
        except BaseException:
            os.close(self.write_fd)
            os.close(self.fd)
            raise
        finally:
            os.close(self.read_fd)  # QEMU holds its own copy now
        self.started = time.monotonic()
        self.thread.start()

    def progress(self, status: str = "active") -> dict[str, Any]:
        """Where the feed is, in :func:`progress_of`'s shape (what ``save`` and ``migrate``
        report), for a restore's progress: bytes fed to QEMU, left, and the rate so far."""
        total = self.layout.stream_len
        fed = total if status == "completed" else min(self.fed, total)
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return {
            "status": status,
            "transferred": fed,
            "remaining": total - fed,
            "total": total,
            "mbps": fed * 8 / 1e6 / elapsed,
        }

    def reporter(self, progress: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        """A ``check`` for :func:`wait_incoming` that gives ``progress`` the feed's
        position every PROGRESS_EVERY seconds."""
        last = [time.monotonic()]

        def check() -> None:
            now = time.monotonic()
            if now - last[0] >= PROGRESS_EVERY:
                last[0] = now
                progress(self.progress())

        return check

    def _run(self) -> None:
        buf = bytearray(FEED_CHUNK)
        view = memoryview(buf)
        pos, end, qemu_reads = 0, self.layout.offset + self.layout.stream_len, True
        try:
            while pos < end:
                n = os.preadv(self.fd, [view[: min(FEED_CHUNK, end - pos)]], pos)
                if n <= 0:
                    raise OSError(errno.EIO, f"the file shrank while it was read ({pos} of {end} bytes)")
                self.sealer.update(view[:n])
                if pos + n > self.layout.offset and qemu_reads:
                    qemu_reads = self._write(view[max(0, self.layout.offset - pos) : n])
                pos += n
                self.fed = max(0, pos - self.layout.offset)
        except BaseException as exc:  # reported by verify()
            self.error = exc
        finally:
            os.close(self.write_fd)  # EOF for QEMU
            os.close(self.fd)  # the feed owns the file's fd from its start on

    def _write(self, data: memoryview) -> bool:
        """Write ``data`` to QEMU; False once QEMU closed the pipe (it failed on the stream)."""
        while data:
            try:
                n = os.write(self.write_fd, data)
            except BrokenPipeError:
                return False
            data = data[n:]
        return True

    def verify(self, timeout: float, mismatch_only: bool = False) -> None:
        """Wait for the whole file to have been read; compare its digest with the trailer's.
        With ``mismatch_only`` (QEMU failed: is the file the reason?) only a digest that
        differs is raised, and a feed still blocked on QEMU is left alone.

        :raise CheckpointError: the digest differs (corrupted, or another file's stream),
            the file could not be read, or the feed did not finish within ``timeout``.
        """
        from lightvm.mobility.format import CheckpointError

        self.thread.join(timeout)
        if mismatch_only and (self.thread.is_alive() or self.error is not None):
            return
        if self.thread.is_alive():
            raise CheckpointError(f"{self.path}: the checkpoint was not read within {timeout:.1f} s")
        if self.error is not None:
            raise CheckpointError(f"{self.path}: cannot read the checkpoint: {self.error}")
        if not hmac.compare_digest(self.sealer.digest(), self.layout.digest):
            what = "HMAC-SHA256" if self.layout.key is not None else "SHA-256"
            raise CheckpointError(
                f"{self.path}: corrupted checkpoint: the {what} of its header and stream does not match the"
                " one saved with it; nothing was restored"
            )


PROGRESS_EVERY = 0.25  # seconds between two progress reports of a running migration


def progress_of(info: dict[str, Any]) -> dict[str, Any]:
    """What a person watching a migration wants from a ``query-migrate`` answer."""
    raw = info.get("ram")
    ram: dict[str, Any] = raw if isinstance(raw, dict) else {}
    out = {
        "status": str(info.get("status", "")),
        "transferred": int(ram.get("transferred", 0)),
        "remaining": int(ram.get("remaining", 0)),
        "total": int(ram.get("total", 0)),
        "mbps": float(ram.get("mbps", 0.0)),
    }
    if info.get("downtime") is not None:
        out["downtime_ms"] = float(info["downtime"])
    return out


def wait_migration(
    machine: Machine,
    timeout: float,
    what: str,
    stall: float | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Poll ``query-migrate`` until the migration completes; its final answer.
    ``progress`` gets :func:`progress_of` every PROGRESS_EVERY seconds and at the end.

    With ``stall``, a stream that sends nothing for that many seconds is cancelled (a cut
    network stalls TCP silently; QEMU itself would wait for minutes).

    :raise QMPError: it failed or was cancelled (QEMU's reason quoted), stalled, or did not finish in time.
    """
    deadline = Deadline(timeout)
    settle = Deadline(timeout)  # re-armed at completion (below)
    completed = False
    delay = MIGRATE_POLL
    sent, since = -1, time.monotonic()
    reported = time.monotonic()
    while True:
        info = machine.qmp.execute("query-migrate", timeout=max(0.5, deadline.remaining()))
        status = str(info.get("status", "")) if isinstance(info, dict) else ""
        if status == "completed":
            if not completed:
                completed, settle = True, Deadline(0.2)
            if not info.get("total-time") and not settle.expired():
                # QEMU sets the state (and sends its event) a moment before it fills in
                # total-time and downtime: ask again for the figures.
                machine.qmp.pump(0.0005)
                continue
            if progress is not None:
                progress(progress_of(info))
            return dict(info)
        if status in ("failed", "cancelled"):
            reason = str(info.get("error-desc", status))
            raise QMPError(f"{what} {status}: {reason}")
        ram = info.get("ram") if isinstance(info, dict) else None
        now_sent = int(ram.get("transferred", 0)) if isinstance(ram, dict) else 0
        if now_sent != sent:
            sent, since = now_sent, time.monotonic()
        if progress is not None and time.monotonic() - reported >= PROGRESS_EVERY:
            reported = time.monotonic()
            progress(progress_of(info))
        stalled = stall is not None and status == "active" and time.monotonic() - since > stall
        if deadline.expired() or stalled:
            with contextlib.suppress(QMPError):
                machine.qmp.execute("migrate_cancel", timeout=1.0)
            if stalled:
                raise QMPError(
                    f"{what} stalled: nothing sent for {stall:.1f} s after {sent} bytes "
                    "(is the network to the destination down?)"
                )
            raise QMPError(f"{what} did not complete within {timeout:.1f} s (status {status or 'unknown'})")
        machine.qmp.pump(delay)
        delay = min(delay * 2, 0.01)


def wait_incoming(machine: Machine, timeout: float, what: str, check: Callable[[], None] | None = None) -> None:
    """Wait until QEMU has loaded an incoming stream (its runstate leaves ``inmigrate``).
    ``check`` runs on every poll and may raise to abort (e.g. the migration's peer went away).

    :raise QMPError: the load failed (QEMU exits or reports failure) or took too long.
    """
    deadline = Deadline(timeout)
    delay = MIGRATE_POLL
    while True:
        if check is not None:
            check()
        status = machine.query_status(timeout=max(0.5, deadline.remaining()))
        if status != "inmigrate":
            info = machine.qmp.execute("query-migrate", timeout=2.0)
            state = str(info.get("status", "")) if isinstance(info, dict) else ""
            if state and state != "completed":
                raise QMPError(f"{what}: incoming migration {state}: {info.get('error-desc', '')}")
            if status not in ("paused", "prelaunch", "running"):
                raise QMPError(f"{what}: QEMU is {status} after the incoming migration")
            return
        if deadline.expired():
            raise QMPError(f"{what}: incoming migration not finished within {timeout:.1f} s")
        machine.qmp.pump(delay)
        delay = min(delay * 2, 0.01)


__all__ = [
    "FDNAME",
    "VerifiedFeed",
    "outgoing",
    "stream_in",
    "stream_out",
    "wait_incoming",
    "wait_migration",
    "want_events",
]
