"""The two host processes a XenStore guest talks to, besides xenstored: netback and a relay.

:class:`Netback` is the dom0 side of every vif's XenbusState handshake, as Linux's
netback and the vif hotplug script do it, on its own store connection and thread:
it watches the backend tree; a new device (state Initialising, online) goes to
InitWait with ``hotplug-status = connected``, and it watches the device's frontend
state; when the guest's frontend says Initialised or Connected, the backend goes to
Connected.

:class:`Relay` carries a guest's store channel to xenstored. Each VM gets a unix
socket that its QEMU connects to (a second 16550 UART with a socket chardev; the
guest side is images/base/xs.c). Per guest connection the relay opens one
connection to xenstored and forwards the wire protocol both ways; relative paths in
the guest's requests are scoped to ``/local/domain/<id>/`` as Xen does. One thread and
a selector serve every VM. The relay's connection is dom0's, so xenstored does not
apply the guest's permissions (in Xen the guest's ring connection is domain <id>'s):
the guest here is trusted, as it is our own unikernel.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import shutil
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lightvm import store
from lightvm.store import HEADER, XENSTORE_PAYLOAD_MAX, StoreError, XsClient, XsError
from lightvm.util import short_unix_path

BACKEND_ROOT = "/local/domain/0/backend/vif"
# requests whose first argument is a path (relative ones are scoped to the domain)
PATH_OPS = frozenset(
    {store.XS_DIRECTORY, store.XS_READ, store.XS_GET_PERMS, store.XS_WATCH, store.XS_UNWATCH,
     store.XS_WRITE, store.XS_MKDIR, store.XS_RM, store.XS_SET_PERMS}
)  # fmt: skip


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
                if not self.c.events:
                    ready, _, _ = select.select([self.c.sock], [], [], 0.1)
                    if not ready:
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


@dataclass
class _Link:
    domid: int
    listener: socket.socket
    guest: socket.socket | None = None
    upstream: socket.socket | None = None
    inbuf: bytearray = field(default_factory=bytearray)


def scope(msg_type: int, payload: bytes, domid: int) -> bytes:
    """A guest request's payload with a relative path made absolute under its domain path.

    :raise StoreError: the scoped payload would be over the protocol's limit.
    """
    if msg_type not in PATH_OPS or not payload or payload[:1] in (b"/", b"@"):
        return payload
    scoped = f"/local/domain/{domid}/".encode() + payload
    if len(scoped) > XENSTORE_PAYLOAD_MAX:
        raise StoreError(f"domain {domid}: request too long once scoped")
    return scoped


class Relay:
    """Guest store channels (QEMU chardev sockets) to xenstored; one selector thread."""

    def __init__(self, daemon: store.XenStored) -> None:
        self.daemon = daemon
        # short: QEMU's chardev path must fit AF_UNIX's 108 bytes
        self.dir = Path(tempfile.mkdtemp(prefix="lvxs-", dir="/tmp"))
        self.sel = selectors.DefaultSelector()
        self.links: dict[int, _Link] = {}
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lightvm-xs-relay", daemon=True)
        self._thread.start()

    def socket_path(self, domid: int) -> Path:
        return self.dir / f"d{domid}"

    def add(self, domid: int) -> Path:
        """Listen for domain ``domid``'s QEMU; the path to give its chardev."""
        path = self.socket_path(domid)
        lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address, dirfd = short_unix_path(path)
        try:
            lst.bind(address)
            lst.listen(1)
        except OSError as exc:
            lst.close()
            raise StoreError(f"relay socket {path}: {exc}") from exc
        finally:
            if dirfd is not None:
                os.close(dirfd)
        lst.setblocking(False)
        link = _Link(domid, lst)
        with self.lock:
            self.links[domid] = link
            self.sel.register(lst, selectors.EVENT_READ, (link, "listen"))
        self._wake_w.send(b"x")
        return path

    def remove(self, domid: int) -> None:
        with self.lock:
            link = self.links.pop(domid, None)
            if link is not None:
                self._close(link)
        self._wake_w.send(b"x")

    def _close(self, link: _Link) -> None:
        for s in (link.listener, link.guest, link.upstream):
            if s is not None:
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(s)
                s.close()
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
        self._wake_r.close()
        self._wake_w.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for key, _mask in self.sel.select(timeout=0.5):
                    if key.data is None:
                        self._wake_r.recv(4096)
                        continue
                    with self.lock:
                        link, role = key.data
                        if link.domid in self.links:
                            self._serve(link, role)
        except BaseException as exc:
            if not self._stop.is_set():
                self.error = exc

    def _serve(self, link: _Link, role: str) -> None:
        if role == "listen":
            guest, _ = link.listener.accept()
            guest.settimeout(store.DEFAULT_TIMEOUT)
            up = XsClient.connect(self.daemon.socket).sock
            link.guest, link.upstream = guest, up
            self.sel.unregister(link.listener)
            self.sel.register(guest, selectors.EVENT_READ, (link, "guest"))
            self.sel.register(up, selectors.EVENT_READ, (link, "upstream"))
            return
        src = link.guest if role == "guest" else link.upstream
        assert src is not None and link.guest is not None and link.upstream is not None
        data = src.recv(65536)
        if not data:  # the guest went away (VM destroyed) or xenstored did
            for s in (link.guest, link.upstream):
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(s)
                s.close()
            link.guest = link.upstream = None
            return
        if role == "upstream":
            link.guest.sendall(data)
            return
        link.inbuf += data
        while len(link.inbuf) >= HEADER.size:
            msg_type, req_id, tx_id, length = store.unpack_header(bytes(link.inbuf[: HEADER.size]))
            if len(link.inbuf) < HEADER.size + length:
                break
            payload = bytes(link.inbuf[HEADER.size : HEADER.size + length])
            del link.inbuf[: HEADER.size + length]
            link.upstream.sendall(store.pack(msg_type, req_id, tx_id, scope(msg_type, payload, link.domid)))


__all__ = ["Netback", "Relay", "scope"]
