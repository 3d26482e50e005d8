"""The two host processes a XenStore guest talks to, besides xenstored: netback and a relay.

:class:`Netback` is the dom0 side of every vif's XenbusState handshake, as Linux's
netback and the vif hotplug script do it, on its own store connection and thread:
it watches the backend tree; a new device (state Initialising, online) goes to
InitWait with ``hotplug-status = connected``, and it watches the device's frontend
state; when the guest's frontend says Initialised or Connected, the backend goes to
Connected.

:class:`Relay` carries a guest's store channel to xenstored. Each VM gets a unix
socket that its QEMU connects to (a second 16550 UART with a socket chardev; the
guest side is images/base/xs.c). The relay copies the guest's bytes into the page
xenstored maps as that domain's ring (tools/xsshim makes it a shared file) and back,
so xenstored serves the guest as domain ``<id>`` itself: relative paths under
``/local/domain/<id>/``, the guest's own permissions and quotas, as in Xen. One
thread and a selector serve every VM.

The relay runs inside the process that creates the VMs, and that process's create path
uses ``select()``, which fails on a descriptor numbered 1024 or more. So the relay keeps
one descriptor per VM (the guest's socket), numbered above 1024 (:func:`lift_fd`), maps
each ring without keeping its file open (Python's ``mmap`` keeps a duplicate), and closes
a listener once its QEMU has connected: with 1,000 VMs the creating process's own new
descriptors still get low numbers.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import resource
import selectors
import shutil
import socket
import struct
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lightvm.bench.xenstore import store
from lightvm.bench.xenstore.store import StoreError, XsError
from lightvm.util import short_unix_path, wait_readable

BACKEND_ROOT = "/local/domain/0/backend/vif"


class Netback:
    """netback + hotplug for every vif in the store, on a thread; :meth:`stop` ends it."""

    TOKEN = "netback"

    def __init__(self, daemon: store.XenStored) -> None:
        self.c = daemon.client()
        self.c.watch(BACKEND_ROOT, self.TOKEN)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._fronts: dict[str, str] = {}  # backend path -> frontend path, watched
        self._thread = threading.Thread(target=self._run, name="lightvm-netback", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.c.close()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.c.events and not wait_readable(self.c.sock.fileno(), 0.1):
                    continue
                self._handle(*self.c.next_event())
        except BaseException as exc:  # kept for the fleet to report; the thread ends
            if not self._stop.is_set():
                self.error = exc

    def _handle(self, path: str, token: str) -> None:
        if token.startswith("fe:"):
            self._frontend_changed(token[3:])
            return
        rest = path[len(BACKEND_ROOT) :].strip("/").split("/")
        if len(rest) < 2 or not rest[0].isdigit() or not rest[1].isdigit():
            return
        back = f"{BACKEND_ROOT}/{rest[0]}/{rest[1]}"
        try:
            if self.c.read(f"{back}/state") != str(store.XENBUS_INITIALISING):
                return
            if self.c.read(f"{back}/online") != "1":
                return
            front = self.c.read(f"{back}/frontend")
        except XsError:
            return  # half-written or already removed
        self.c.write(f"{back}/state", str(store.XENBUS_INIT_WAIT))
        self.c.write(f"{back}/hotplug-status", "connected")
        if back not in self._fronts:
            self._fronts[back] = front
            self.c.watch(f"{front}/state", f"fe:{back}")

    def _frontend_changed(self, back: str) -> None:
        front = self._fronts.get(back)
        if front is None:
            return
        try:
            fe_state = self.c.read(f"{front}/state")
            be_state = self.c.read(f"{back}/state")
        except XsError:  # the device is gone: stop watching its frontend
            del self._fronts[back]
            with contextlib.suppress(XsError):
                self.c.unwatch(f"{front}/state", f"fe:{back}")
            return
        connected = str(store.XENBUS_CONNECTED)
        if fe_state in (str(store.XENBUS_INITIALISED), connected) and be_state != connected:
            self.c.write(f"{back}/state", connected)


# struct xenstore_domain_interface (xen/include/public/io/xs_wire.h)
RING_SIZE = 1024
REQ, RSP = 0, 1024
REQ_CONS, REQ_PROD, RSP_CONS, RSP_PROD = 2048, 2052, 2056, 2060
IDX = struct.Struct("<I")
WAKE_PORT = 0xFFFF  # any port but the VIRQ's: xenstored wakes and scans the domains' rings


FD_SETSIZE = 1024  # select() fails on descriptors from this number on
Ring = mmap.mmap | memoryview  # a domain's 4 KiB ring page, mapped shared


def lift_fd(sock: socket.socket) -> socket.socket:
    """``sock`` moved to a descriptor numbered FD_SETSIZE or more (the old one is closed),
    so that it never takes a low number that a ``select()`` elsewhere in the process
    needs. Unchanged when the descriptor limit leaves no room above FD_SETSIZE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= FD_SETSIZE * 2 and hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft <= FD_SETSIZE * 2:
        return sock
    fd = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, FD_SETSIZE)
    lifted = socket.socket(fileno=fd)
    lifted.settimeout(sock.gettimeout())
    sock.close()
    return lifted


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
PAGE = 4096


def map_ring(path: Path) -> tuple[memoryview, int]:
    """The ring page file ``path`` mapped shared, as a writable byte view, and its address
    (for :func:`unmap_ring`). No descriptor stays open.

    :raise OSError: the file cannot be opened or mapped.
    """
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        addr = _libc.mmap(None, PAGE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
    finally:
        os.close(fd)
    if addr is None or addr == ctypes.c_void_p(-1).value:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap {path}: {os.strerror(err)}")
    return memoryview((ctypes.c_ubyte * PAGE).from_address(addr)).cast("B"), addr


def unmap_ring(view: memoryview, addr: int) -> None:
    """Undo :func:`map_ring`. The view must not be used afterwards (it is released here)."""
    view.release()
    _libc.munmap(addr, PAGE)


@dataclass
class _Link:
    domid: int
    listener: socket.socket | None
    ring: memoryview
    ring_addr: int
    guest: socket.socket | None = None
    pending: bytearray = field(default_factory=bytearray)  # guest bytes not yet in the ring
    dropped: str = ""  # why the guest's channel was closed, if it was


def ring_put(ring: Ring, data: bytes | bytearray) -> int:
    """Copy what fits of ``data`` into the request ring; how many bytes went in.

    :raise StoreError: the indexes are corrupt (more than a ring's worth outstanding).
    """
    cons, prod = int(IDX.unpack_from(ring, REQ_CONS)[0]), int(IDX.unpack_from(ring, REQ_PROD)[0])
    used = (prod - cons) & 0xFFFFFFFF
    if used > RING_SIZE:
        raise StoreError(f"xenstore request ring corrupt (prod {prod}, cons {cons})")
    n = min(len(data), RING_SIZE - used)
    for i in range(n):  # byte by byte: the ring wraps; requests are tens of bytes
        ring[REQ + ((prod + i) % RING_SIZE)] = data[i]
    IDX.pack_into(ring, REQ_PROD, (prod + n) & 0xFFFFFFFF)
    return n


def ring_take(ring: Ring) -> bytes:
    """Everything xenstored has written to the response ring since the last call.

    :raise StoreError: the indexes are corrupt.
    """
    cons, prod = int(IDX.unpack_from(ring, RSP_CONS)[0]), int(IDX.unpack_from(ring, RSP_PROD)[0])
    n = (prod - cons) & 0xFFFFFFFF
    if n > RING_SIZE:
        raise StoreError(f"xenstore response ring corrupt (prod {prod}, cons {cons})")
    out = bytes(ring[RSP + ((cons + i) % RING_SIZE)] for i in range(n))
    IDX.pack_into(ring, RSP_CONS, (cons + n) & 0xFFFFFFFF)
    return out


def _whole_messages(buf: bytearray) -> int:
    """How many leading bytes of ``buf`` are whole messages. The UART delivers the guest's
    bytes a few at a time; a Xen guest puts a whole message in its ring, then notifies,
    and waking xenstored for every byte would time the relay, not the store."""
    end = 0
    while len(buf) - end >= store.HEADER.size:
        length = store.unpack_header(bytes(buf[end : end + store.HEADER.size]))[3]
        if len(buf) - end < store.HEADER.size + length:
            break
        end += store.HEADER.size + length
    return end


class Relay:
    """Guest store channels (QEMU chardev sockets) to the domains' xenstored rings; one thread.

    The guest's bytes go into ``ring-<domid>``, the page xenstored maps as that domain's
    ring (tools/xsshim), and the relay writes a port to the ``evtchn`` FIFO to wake the
    daemon; xenstored's notifications come back as domids on the ``notify`` FIFO. So
    xenstored itself serves the guest as domain ``<domid>``: its relative paths, its
    permissions, its quotas, as in Xen.
    """

    def __init__(self, daemon: store.XenStored) -> None:
        self.daemon = daemon
        # short: QEMU's chardev path must fit AF_UNIX's 108 bytes
        self.dir = Path(tempfile.mkdtemp(prefix="lvxs-", dir="/tmp"))
        self.sel = selectors.DefaultSelector()
        self.links: dict[int, _Link] = {}
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self._kick_fd = os.open(daemon.rundir / "evtchn", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._notify_fd = os.open(daemon.rundir / "notify", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r, self._wake_w = socket.socketpair()
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.sel.register(self._notify_fd, selectors.EVENT_READ, "notify")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lightvm-xs-relay", daemon=True)
        self._thread.start()

    def socket_path(self, domid: int) -> Path:
        return self.dir / f"d{domid}"

    def add(self, domid: int) -> Path:
        """Listen for introduced domain ``domid``'s QEMU; the path to give its chardev.

        :raise StoreError: the domain has no ring (not introduced) or the socket failed.
        """
        try:
            ring, addr = map_ring(self.daemon.rundir / f"ring-{domid}")
        except OSError as exc:
            raise StoreError(f"domain {domid}: no xenstore ring ({exc}); introduce it first") from exc
        path = self.socket_path(domid)
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        address, dirfd = short_unix_path(path)
        try:
            lst.bind(address)
            lst.listen(1)
            lst = lift_fd(lst)
        except OSError as exc:
            lst.close()
            unmap_ring(ring, addr)
            raise StoreError(f"relay socket {path}: {exc}") from exc
        finally:
            if dirfd is not None:
                os.close(dirfd)
        lst.setblocking(False)
        link = _Link(domid, lst, ring, addr)
        with self.lock:
            self.links[domid] = link
            self.sel.register(lst, selectors.EVENT_READ, link)
        self._wake_w.send(b"x")
        return path

    def remove(self, domid: int) -> None:
        with self.lock:
            link = self.links.pop(domid, None)
            if link is not None:
                self._close(link)
        with contextlib.suppress(OSError):
            (self.daemon.rundir / f"ring-{domid}").unlink()

    def _close(self, link: _Link) -> None:
        for s in (link.listener, link.guest):
            if s is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(s)
                s.close()
        link.listener = link.guest = None
        unmap_ring(link.ring, link.ring_addr)
        with contextlib.suppress(OSError):
            self.socket_path(link.domid).unlink()

    def stop(self) -> None:
        self._stop.set()
        self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        with self.lock:
            for link in self.links.values():
                self._close(link)
            self.links.clear()
        self.sel.close()
        for fd in (self._kick_fd, self._notify_fd):
            os.close(fd)
        self._wake_r.close()
        self._wake_w.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _kick(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full FIFO: the daemon has wake-ups queued
            os.write(self._kick_fd, IDX.pack(WAKE_PORT))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                events = self.sel.select(timeout=0.5)
                with self.lock:
                    # the rings to serve: those xenstored notified and those with guest input;
                    # all of them after a quiet half second (a notification the FIFO dropped)
                    due: set[int] = set() if events else set(self.links)
                    for key, _mask in events:
                        if key.data is None:
                            self._wake_r.recv(4096)
                        elif key.data == "notify":
                            due.update(self._notified())
                        elif key.data.domid in self.links:
                            self._from_guest(key.data, key.fileobj is key.data.listener)
                            due.add(key.data.domid)
                    for domid in due:
                        link = self.links.get(domid)
                        if link is None:
                            continue
                        try:
                            self._pump(link)
                        except (StoreError, OSError) as exc:  # this guest's channel only
                            self._drop_guest(link, exc)
        except BaseException as exc:
            if not self._stop.is_set():
                self.error = exc

    def _notified(self) -> set[int]:
        """The domids xenstored notified (4 bytes each on the notify FIFO)."""
        try:
            data = os.read(self._notify_fd, 4096)
        except BlockingIOError:
            return set()
        return {IDX.unpack_from(data, i)[0] for i in range(0, len(data) - len(data) % 4, 4)}

    def _from_guest(self, link: _Link, accept: bool) -> None:
        if accept:
            assert link.listener is not None
            guest, _ = link.listener.accept()
            guest.settimeout(store.DEFAULT_TIMEOUT)
            link.guest = guest = lift_fd(guest)
            # one QEMU per domain: the listener's work is done
            self.sel.unregister(link.listener)
            link.listener.close()
            link.listener = None
            with contextlib.suppress(OSError):
                self.socket_path(link.domid).unlink()
            self.sel.register(guest, selectors.EVENT_READ, link)
            return
        assert link.guest is not None
        data = link.guest.recv(65536)
        if not data:  # the VM is gone
            self.sel.unregister(link.guest)
            link.guest.close()
            link.guest = None
            return
        link.pending += data

    def _drop_guest(self, link: _Link, why: BaseException) -> None:
        """A guest that broke the protocol (or whose socket failed) loses its channel; the
        other guests keep theirs. Its domain stays in the store until it is destroyed."""
        link.pending.clear()
        link.dropped = str(why)
        if link.guest is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.sel.unregister(link.guest)
            link.guest.close()
            link.guest = None

    def _pump(self, link: _Link) -> None:
        kick = False
        whole = _whole_messages(link.pending)
        if whole:
            n = ring_put(link.ring, link.pending[:whole])
            del link.pending[:n]
            kick = n > 0
        out = ring_take(link.ring)
        if out:
            kick = True  # space freed: xenstored may have more to write
            if link.guest is not None:
                link.guest.sendall(out)
        if kick:
            self._kick()


__all__ = ["FD_SETSIZE", "Netback", "Relay", "lift_fd", "map_ring", "ring_put", "ring_take", "unmap_ring"]
