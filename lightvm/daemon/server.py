"""lightvmd: the long-lived daemon holding the shell pools, serving :mod:`lightvm.daemon.api`.

This module is the daemon's life: the lock, the socket, the worker threads, start-up
and shutdown. What each request does is :mod:`lightvm.daemon.operations`.

Files in the state dir::

    STATE/lightvmd.lock   flock held for the daemon's whole life (one daemon per state dir)
    STATE/lightvmd.pid    {"pid", "start"} of the daemon (written after the socket is bound)
    STATE/lightvmd.sock   the API socket, 0600 (0660 and the group with --group)
    STATE/lightvmd.log    the log of a daemon started with `lightvm daemon start` (rotated:
                          .1 .. .3, 1 MiB each; lightvm/daemon/logsetup.py); `lightvm daemon log`
    STATE/lightvmd.out    its stdout/stderr: only what bypasses logging (a crash's traceback)
    STATE/pool/ID/        prepared shells (lightvm/daemon/shells.py)

Threads, not asyncio: every connection is served by a thread of its own, so a slow
create (a cold path, a guest that never gets READY) never delays another client, and the
execute path runs the same synchronous code as one-shot mode (QMP client, READY poll)
with no event-loop hop in between. The threads are kept and reused: starting a thread
per connection cost ~0.23 ms of a 0.27 ms new-connection round trip (measured), a
handoff to an idle worker ~0.03 ms. When every worker is busy, one more is started (no
connection ever waits for another). The main thread only accepts connections and
watches SIGTERM/SIGINT through a wakeup fd.

Start-up: take the lock (else another daemon runs: refuse), discard the shells a
killed predecessor left in STATE/pool (their QEMUs, NoXS files, folders), bind the
socket, write the pid file, start the pool. Running VMs need nothing: their state
folders say everything (:mod:`lightvm.state`), so a new daemon "re-adopts" them by
simply serving them. A VM whose create was cut by a kill -9 of the daemon lists as
``incomplete``; ``destroy`` removes it.

Stop (SIGTERM, SIGINT): close the socket, let in-flight requests finish (bounded),
discard every prepared shell, remove the socket and pid file. VMs keep running.
"""

from __future__ import annotations

import fcntl
import grp
import json
import logging
import os
import queue
import selectors
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightvm.daemon import api, sdnotify
from lightvm.daemon.events import EventLog, Watcher, exit_kind
from lightvm.daemon.flavour import poolable
from lightvm.daemon.operations import Operations
from lightvm.daemon.pending import Pending
from lightvm.daemon.pool import Pool
from lightvm.daemon.restore_pool import IncomingFlavour, IncomingPool
from lightvm.daemon.ssh_sessions import Sessions
from lightvm.daemon.warmcli import WarmCLI
from lightvm.errors import SpecError, StateError
from lightvm.lineio import listen_unix
from lightvm.state import StateDir
from lightvm.util import atomic_write, proc_alive, proc_start_time

PID_NAME = "lightvmd.pid"
LOCK_NAME = "lightvmd.lock"
LOG_NAME = "lightvmd.log"
OUT_NAME = "lightvmd.out"
STOP_GRACE = 15.0


@dataclass
class DaemonConfig:
    state_root: Path
    group: str | None = None
    pool_configs: list[Path] = field(default_factory=list)
    pool_size: int = 4
    pool_max: int = 64
    pool_memory_mib: int = 2048
    accel: str = "auto"
    pool_variant: str = "waiting"
    pool_idle_s: float = 30.0  # a grown pool falls back after this long below its peak (adaptive.py)
    pool_parallel: int = 0  # prepares at once; 0: one per core
    incoming_size: int = 1  # prepared -incoming shells per known checkpoint flavour (0: none)
    incoming_files: list[Path] = field(default_factory=list)  # checkpoints whose flavour to prepare at start


def _log(msg: str) -> None:
    """lightvmd's messages: logger ``lightvm.daemon`` at INFO, wherever lightvm/daemon/logsetup.py
    sends it (the rotated STATE/lightvmd.log, the journal, or stderr)."""
    logging.getLogger("lightvm.daemon").info(msg)


def qemu_note() -> str | None:
    """The log line of a daemon whose microvm guests run on Debian's full QEMU (no slim
    build, no override), or None. Said here, where the QEMUs are chosen: a client this
    daemon serves does not check its own environment for it (lightvm/cli/vm.py, qemu_note)."""
    from lightvm import qemubin

    if os.environ.get(qemubin.ENV) or qemubin.slim_binary(qemubin.SLIM_QEMU) is not None:
        return None
    return f"qemu: {qemubin.explain('microvm', slim=qemubin.SLIM_QEMU)}"


def read_pid(state_root: Path) -> tuple[int, int | None] | None:
    """(pid, start) of the daemon recorded in the state dir, if that process still runs."""
    try:
        data = json.loads((state_root / PID_NAME).read_text())
        pid, start = int(data["pid"]), data.get("start")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (pid, start) if proc_alive(pid, start) else None


class Daemon(Operations):
    """One lightvmd over one state dir (its API ops: :class:`lightvm.daemon.operations.Operations`)."""

    def __init__(self, config: DaemonConfig, log: Callable[[str], None] = _log) -> None:
        self.config = config
        self.state = StateDir(config.state_root)
        self.log = log
        self.started = time.time()
        self.pool: Pool | None = None
        self.incoming: IncomingPool | None = None
        self.sessions = Sessions(log)
        self.events = EventLog()
        self.watcher = Watcher(self._qemu_exited)
        self.warm_cli = WarmCLI(log)
        self._lock_fd: int | None = None
        self._listener: socket.socket | None = None
        self._threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        self._idle = 0  # workers waiting on the queue (under _threads_lock)
        self._queue: queue.SimpleQueue[socket.socket | None] = queue.SimpleQueue()
        self._tsc_hz = 0
        self.pending = Pending()
        self._spec_cache: dict[str, tuple[tuple[Any, ...], Any]] = {}
        self.handlers: dict[str, api.Handler] = self._handlers()

    # ------------------------------------------------------------------ lifetime

    def _qemu_exited(self, vm: str, fields: dict[str, Any]) -> None:
        """A VM's QEMU ended without lightvmd stopping it (the watcher's thread): the event,
        and its exit status kept in the VM's folder for ``info`` (with or without lightvmd).
        Another process's destroy (one-shot ``destroy``, ``save``, ``migrate``, the API
        without the daemon) marks the folder first or has removed it: ``destroyed``, not
        ``crashed``."""
        from lightvm.instance import DESTROYING

        folder = self.state.vms_root / vm
        if not folder.is_dir() or (folder / DESTROYING).exists():
            self.events.emit("destroyed", vm, by="another lightvm process", **fields)
            return
        self.events.emit(exit_kind(fields), vm, **fields)
        try:
            self._toolstack().note_exit(vm, int(fields.get("pid") or 0), str(fields.get("status", "unknown")))
        except Exception as exc:  # the watcher thread must go on watching the other VMs
            self.log(f"{vm}: cannot keep its exit status: {exc}")

    def setup(self) -> None:
        """Lock, clean, bind, record, start the pool.

        :raise StateError: another daemon holds the state dir, or the socket cannot be made.
        """
        from lightvm import accel as accelmod
        from lightvm import hostfacts

        self.state.ensure()
        fd = os.open(self.state.root / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            other = read_pid(self.state.root)
            who = f"pid {other[0]}" if other else "another process"
            raise StateError(f"lightvmd already runs on {self.state.root} ({who})") from None
        self._lock_fd = fd
        self._tsc_hz = hostfacts.tsc_hz()
        specs = []
        accel = accelmod.select(self.config.accel).accel
        # Warm the execute path: its modules imported and the pool configs parsed now, not
        # in the first create (a cold first request took ~5 ms more).
        import lightvm.boot
        import lightvm.toolstack  # noqa: F401

        for path in self.config.pool_configs:
            spec = self._load_spec(str(path))
            why = poolable(spec)
            if why:
                raise SpecError(f"{path}: cannot pool a VM with {why}")
            specs.append((spec, accel))
        self.pool = Pool(
            self.state,
            specs,
            size=self.config.pool_size,
            max_shells=self.config.pool_max,
            memory_budget_mib=self.config.pool_memory_mib,
            log=self.log,
            variant=self.config.pool_variant,
            idle_s=self.config.pool_idle_s,
            parallel=self.config.pool_parallel or None,
        )
        self.pool.start()  # discards a killed predecessor's shells first
        self.incoming = IncomingPool(self.state, self.config.incoming_size, log=self.log)
        self.incoming.start()
        for path in self.config.incoming_files:
            from lightvm.mobility.format import read_header

            if path.is_dir():  # a template folder: shells mapping its RAM (lightvm/daemon/templates.py)
                from lightvm.daemon.templates import checked_template

                flavour = IncomingFlavour.of(checked_template(path), path)
            else:
                flavour = IncomingFlavour.of(read_header(path)[0])
            if flavour is None:
                raise StateError(f"--incoming {path}: its VM has taps or disks; only user networking is prepared")
            self.incoming.learn(flavour)
        self.sessions.start()
        self._watch_running()
        self.watcher.start()
        self._bind()
        atomic_write(
            self.state.root / PID_NAME, json.dumps({"pid": os.getpid(), "start": proc_start_time(os.getpid())})
        )
        self.warm_cli.start(self.state.root)
        flavours = self.pool.stats()["flavours"]
        self.log(f"serving {api.socket_path(self.state.root)} (pid {os.getpid()}); pool {flavours}")
        note = qemu_note()
        if note:
            self.log(note)
        shells = ", ".join(f["flavour"] for f in flavours) or "none"
        status = f"serving {api.socket_path(self.state.root)}; pools: {shells}"
        why = sdnotify.notify(ready=1, mainpid=os.getpid(), status=status)
        if why:
            self.log(why)

    def _watch_running(self) -> None:
        """Watch the QEMUs of VMs that run already (a previous daemon's, one-shot creates)."""
        from lightvm.toolstack import Toolstack

        for vm in Toolstack(self.state.root).list():
            if vm.pid and vm.status in ("running", "paused"):
                self.watcher.watch(vm.name, vm.pid)

    def _bind(self) -> None:
        path = api.socket_path(self.state.root)
        try:
            sock = listen_unix(path, 128)  # born 0600; a socket there is a dead daemon's: we hold the lock
        except OSError as exc:
            raise StateError(f"cannot serve {path}: {exc.strerror or exc}") from exc
        try:
            if self.config.group:
                try:
                    gid = grp.getgrnam(self.config.group).gr_gid
                except KeyError:
                    raise StateError(f"--group {self.config.group}: no such group") from None
                os.chown(path, -1, gid)
                os.chmod(path, 0o660)
        except OSError as exc:
            sock.close()
            raise StateError(f"cannot serve {path}: {exc.strerror or exc}") from exc
        except BaseException:
            sock.close()
            raise
        self._listener = sock

    def serve_forever(self, wakeup_fd: int) -> None:
        """Accept connections until a byte arrives on ``wakeup_fd`` (a signal; main thread)."""
        assert self._listener is not None
        rfd = wakeup_fd
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, "accept")
        sel.register(rfd, selectors.EVENT_READ, "signal")
        try:
            while True:
                events = sel.select(timeout=60.0)
                if any(key.data == "signal" for key, _ in events):
                    self.log("stopping (signal)")
                    return
                for _ in events:
                    try:
                        conn, _addr = self._listener.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as exc:
                        self.log(f"accept failed: {exc}")  # e.g. EMFILE: keep serving the others
                        continue
                    self._dispatch(conn)
        finally:
            sel.close()

    def _dispatch(self, conn: socket.socket) -> None:
        """Hand ``conn`` to an idle worker, or start one more when none is idle."""
        with self._threads_lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        if spawn:
            thread = threading.Thread(target=self._worker, args=(conn,), name="api", daemon=True)
            with self._threads_lock:
                self._threads.add(thread)
            thread.start()
        else:
            self._queue.put(conn)

    def _worker(self, conn: socket.socket | None) -> None:
        try:
            while conn is not None:
                try:
                    api.serve_connection(conn, self.handlers, self.log)
                except Exception:  # a client must never kill the daemon
                    self.log("connection handler failed:\n" + traceback.format_exc())
                with self._threads_lock:
                    self._idle += 1
                conn = self._queue.get()
        finally:
            with self._threads_lock:
                self._threads.discard(threading.current_thread())

    def close(self) -> None:
        """Stop serving, finish in-flight requests (bounded), discard shells, remove files.

        A daemon that never got the lock touches nothing (the files are another daemon's).
        """
        if self._lock_fd is None:
            return
        sdnotify.notify(stopping=1, status="stopping: finishing requests, discarding prepared shells")
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        api.socket_path(self.state.root).unlink(missing_ok=True)
        self.warm_cli.stop()
        end = time.monotonic() + STOP_GRACE
        with self._threads_lock:
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)  # idle workers leave; busy ones finish their client first
        for thread in threads:
            thread.join(max(0.0, end - time.monotonic()))
        self.sessions.stop()
        self.events.close()  # ends the event streams
        self.watcher.stop()
        if self.incoming is not None:
            self.incoming.stop()
        if self.pool is not None:
            self.pool.stop()
        if self._lock_fd is not None:
            (self.state.root / PID_NAME).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None
        self.log("stopped; prepared shells discarded, VMs left running")


def run(config: DaemonConfig) -> int:
    """Run lightvmd in the foreground until SIGTERM/SIGINT; the exit status."""
    # The signal handlers go in first: a SIGTERM during setup (pool start, bind) then
    # stops the daemon cleanly through the same path as one that comes later.
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGTERM, signal.SIGINT)}
    old_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    daemon = Daemon(config)
    try:
        daemon.setup()
        daemon.serve_forever(rfd)
    finally:
        daemon.close()
        signal.set_wakeup_fd(old_wakeup)
        for s, handler in previous.items():
            signal.signal(s, handler)
        os.close(rfd)
        os.close(wfd)
    return 0


__all__ = ["Daemon", "DaemonConfig", "read_pid", "run"]
