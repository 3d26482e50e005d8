"""What happened to the VMs of a state dir, as lightvmd saw it: ``lightvm events``.

Two parts:

* :class:`EventLog`: the events, numbered, with a wall-clock timestamp; the last
  ``KEEP`` kept in memory (an event log is for watching, not an audit trail: a restarted
  daemon starts a new one). Readers wait on it for what comes next.
* :class:`Watcher`: one thread holding a pidfd per running VM's QEMU. When one becomes
  readable and nobody asked lightvmd to stop that VM, the VM ``crashed`` (or, exit status
  1 from isa-debug-exit, its guest ``powered-off``): the exit status is read with
  ``waitid(P_PIDFD, ..., WNOWAIT)`` (peeked, not reaped: whoever owns the child still
  reaps it). A QEMU that is not this daemon's child (started before it, or by a one-shot
  command) has no status to read: the event says "unknown".

Kinds: ``created``, ``ready``, ``paused``, ``resumed``, ``shutdown``, ``destroyed``,
``restored``, ``migrated`` (left for another host), ``migrated-in``, ``crashed``,
``powered-off``, ``saved``. ``save`` runs in the CLI's (or the API's) own process, not in
lightvmd: that process tells lightvmd once the file is complete (:func:`notify_saved`, the
``note`` op, before the saved VM is destroyed), so ``saved`` comes before ``destroyed``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

KEEP = 10_000
POLL_S = 0.5
EXIT_POWEROFF = 1  # QEMU's status for the guest's clean poweroff (isa-debug-exit, value 0)


class EventLog:
    def __init__(self, keep: int = KEEP) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=keep)
        self._seq = 0
        self._cond = threading.Condition()
        self.closed = False

    def emit(self, kind: str, vm: str, **fields: Any) -> None:
        with self._cond:
            self._seq += 1
            self._events.append({"seq": self._seq, "time": time.time(), "event": kind, "vm": vm, **fields})
            self._cond.notify_all()

    def since(self, seq: int, vm: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [e for e in self._events if e["seq"] > seq and (vm is None or e["vm"] == vm)]

    def wait(self, seq: int, timeout: float) -> None:
        """Return when an event after ``seq`` exists, the log closed, or ``timeout`` passed."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > seq or self.closed, timeout)

    def last_seq(self) -> int:
        with self._cond:
            return self._seq

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


def exit_status(pidfd: int) -> dict[str, Any]:
    """How the process behind ``pidfd`` ended (it has): ``exit_code`` or ``signal``, and
    ``status`` in words; peeked with WNOWAIT so its parent still reaps it."""
    try:
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except (ChildProcessError, OSError):
        return {"status": "unknown (QEMU was not started by this lightvmd)"}
    if info is None:
        return {"status": "unknown"}
    if info.si_code == os.CLD_EXITED:
        return {"exit_code": info.si_status, "status": f"exit status {info.si_status}"}
    try:
        name = signal.Signals(info.si_status).name
    except ValueError:
        name = f"signal {info.si_status}"
    return {"signal": info.si_status, "status": f"killed by signal {info.si_status} ({name})"}


class Watcher:
    """Watches each VM's QEMU; ``on_exit(vm, fields)`` for those that end on their own."""

    def __init__(self, on_exit: Callable[[str, dict[str, Any]], None]) -> None:
        self._on_exit = on_exit
        self._lock = threading.Lock()
        self._fds: dict[int, tuple[str, int]] = {}  # pidfd -> (vm, pid)
        self._expected: set[str] = set()  # VMs lightvmd is stopping itself
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="lightvmd-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def watch(self, vm: str, pid: int) -> None:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return  # already gone: its end is the caller's to report
        with self._lock:
            self._expected.discard(vm)
            self._fds[fd] = (vm, pid)
        self._wake()

    def expect_exit(self, vm: str) -> None:
        """lightvmd itself is about to stop ``vm``'s QEMU (destroy, shutdown, migration)."""
        with self._lock:
            self._expected.add(vm)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while not self._stop:
            with self._lock:
                fds = list(self._fds)
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            for fd in fds:
                poller.register(fd, select.POLLIN)
            for fd, _ in poller.poll(POLL_S * 1000):
                if fd == self._wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_r, 4096)
                    continue
                self._ended(fd)

    def _ended(self, fd: int) -> None:
        fields = exit_status(fd)
        with self._lock:
            vm, pid = self._fds.pop(fd, ("", 0))
            expected = vm in self._expected
            self._expected.discard(vm)
        os.close(fd)
        if vm and not expected:
            self._on_exit(vm, {"pid": pid, **fields})

    def stop(self) -> None:
        self._stop = True
        self._wake()
        self._thread.join(2 * POLL_S + 1)
        with self._lock:
            for fd in self._fds:
                os.close(fd)
            self._fds.clear()
        os.close(self._wake_r)
        os.close(self._wake_w)


def stream(log: EventLog, since: int, vm: str | None, follow: bool) -> Any:
    """The ``events`` op: the events after ``since`` (of ``vm``), and with ``follow`` a
    Takeover that then writes each new event as one JSON line until the client hangs up
    or the daemon stops (``{"end": true}`` then)."""
    from lightvm.daemon import api

    backlog = log.since(since, vm)
    if not follow:
        return backlog
    last = backlog[-1]["seq"] if backlog else max(since, log.last_seq())

    def run(conn: Any, rest: bytes) -> bytes | None:
        seq = last
        conn.settimeout(5.0)
        try:
            while not log.closed:
                log.wait(seq, POLL_S)
                for event in log.since(seq, None):
                    seq = event["seq"]
                    if vm is None or event["vm"] == vm:
                        conn.sendall(json.dumps(event, separators=(",", ":")).encode() + b"\n")
                if _hung_up(conn):
                    return None
            conn.sendall(b'{"end":true}\n')
        except OSError:
            pass  # the client went away
        return None

    return api.Takeover({"events": backlog}, run)


def _hung_up(conn: Any) -> bool:
    """Whether the client closed its end (a streaming client sends nothing more)."""
    poller = select.poll()
    poller.register(conn.fileno(), select.POLLIN | select.POLLHUP | select.POLLRDHUP)
    return bool(poller.poll(0))


def exit_kind(fields: dict[str, Any]) -> str:
    return "powered-off" if fields.get("exit_code") == EXIT_POWEROFF else "crashed"


__all__ = ["KEEP", "EventLog", "Watcher", "exit_kind", "exit_status", "stream"]


NOTED = ("saved",)  # what another lightvm process may report through the ``note`` op


def note(log: EventLog, vms_root: Any, args: dict[str, Any]) -> dict[str, Any]:
    """The ``note`` op: another lightvm process reports what it did to a VM of this state
    dir that lightvmd cannot see (a one-shot ``save``). Only the kinds in NOTED, and only
    for a VM that exists here: the event log says what happened, not what anyone claims."""
    from lightvm.errors import NotFoundError, SpecError

    kind, vm, file = args.get("event"), args.get("vm"), args.get("file")
    if kind not in NOTED:
        raise SpecError(f"note: event must be one of {', '.join(NOTED)}")
    if not isinstance(vm, str) or not vm or "/" in vm or vm.startswith(".") or not (vms_root / vm).is_dir():
        raise NotFoundError(f"note: no VM {vm!r} here")
    if not isinstance(file, str) or not file:
        raise SpecError("note: file (the checkpoint's path) is required")
    log.emit(kind, vm, file=file, by="another lightvm process")
    return {}


def notify_saved(state_root: Any, vm: str, file: str) -> None:
    """Tell a lightvmd on ``state_root``, if one runs, that ``vm`` was saved to ``file``
    (its ``saved`` event). Best effort and quick: a save never fails or waits for this."""
    from lightvm.daemon.proto import Client
    from lightvm.errors import LightVMError

    with contextlib.suppress(LightVMError, OSError):
        client = Client.connect(state_root, timeout=0.5)
        try:
            client.call("note", {"event": "saved", "vm": vm, "file": file}, timeout=2.0)
        finally:
            client.close()
