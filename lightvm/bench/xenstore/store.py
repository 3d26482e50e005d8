"""The XenStore-style control plane: Xen's real xenstored, run without a hypervisor.

This is the baseline the paper's NoXS replaces (Fig. 9): a central hierarchical store
with transactions, watches and permissions through which the toolstack describes each
domain and its devices and the backends and frontends do their state handshake. Rather
than imitate it, lightvm runs the real one: Debian's C ``xenstored`` (xen-utils-4.17),
with ``tools/xsshim`` preloaded to fake the hypervisor interfaces it needs
(libxenctrl, libxenevtchn, libxengnttab, /proc/xen/xsd_*; see xsshim.c). The store
itself (its data base, transactions, watches, quotas) is entirely Xen's code.

The module has three layers:

1. :func:`pack` / :func:`unpack_header` / :class:`XsClient`: the xenstore wire
   protocol over the daemon's unix socket (``struct xsd_sockmsg``: type, req_id,
   tx_id, len, then ``len`` bytes of NUL-separated strings), every call under a timeout.
2. :class:`XenStored`: starts the daemon in a private run dir and stops it again.
3. :func:`domain_create` / :func:`domain_destroy`: what xl/libxl write for one domain
   (its nodes, the console and one vif with backend and frontend halves, in
   transactions) and the domain introduction; the toolstack then waits through a
   watch for the backend's InitWait and the hotplug script's ``connected``.

The backend (netback's part of the handshake) and the relay that lets a guest talk to
the store are in :mod:`lightvm.bench.xenstore.guest`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import uuid as uuidmod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lightvm import paths
from lightvm.errors import LightVMError
from lightvm.util import Deadline, short_unix_path

XENSTORED = Path("/usr/lib/xen-4.17/bin/xenstored")
SHIM_DIR = paths.xsshim_source()  # tools/xsshim: in the checkout, or shipped as package data
SHIM = paths.xsshim_build() / "xsshim.so"  # next to it in a checkout, else the cache dir
DEFAULT_TIMEOUT = 5.0

# enum xsd_sockmsg_type (xen/include/public/io/xs_wire.h)
XS_CONTROL = 0
XS_DIRECTORY = 1
XS_READ = 2
XS_GET_PERMS = 3
XS_WATCH = 4
XS_UNWATCH = 5
XS_TRANSACTION_START = 6
XS_TRANSACTION_END = 7
XS_INTRODUCE = 8
XS_RELEASE = 9
XS_GET_DOMAIN_PATH = 10
XS_WRITE = 11
XS_MKDIR = 12
XS_RM = 13
XS_SET_PERMS = 14
XS_WATCH_EVENT = 15
XS_ERROR = 16
XS_IS_DOMAIN_INTRODUCED = 17

HEADER = struct.Struct("<IIII")
XENSTORE_PAYLOAD_MAX = 4096

# enum xenbus_state (xen/include/public/io/xenbus.h)
XENBUS_INITIALISING = 1
XENBUS_INIT_WAIT = 2
XENBUS_INITIALISED = 3
XENBUS_CONNECTED = 4
XENBUS_CLOSED = 6


class StoreError(LightVMError):
    """xenstored could not be started, or a store request failed or timed out."""


class XsError(StoreError):
    """xenstored answered XS_ERROR; ``errno_name`` is its reason (ENOENT, EAGAIN, EACCES...)."""

    def __init__(self, op: str, path: str, errno_name: str) -> None:
        super().__init__(f"xenstore {op} {path!r}: {errno_name}")
        self.errno_name = errno_name


def pack(msg_type: int, req_id: int, tx_id: int, payload: bytes) -> bytes:
    """One request as it goes on the wire.

    :raise StoreError: the payload is over XENSTORE_PAYLOAD_MAX (the daemon would drop us).
    """
    if len(payload) > XENSTORE_PAYLOAD_MAX:
        raise StoreError(f"xenstore request of {len(payload)} bytes: the protocol allows {XENSTORE_PAYLOAD_MAX}")
    return HEADER.pack(msg_type, req_id, tx_id, len(payload)) + payload


def unpack_header(data: bytes) -> tuple[int, int, int, int]:
    """(type, req_id, tx_id, len) of a reply header.

    :raise StoreError: the length is over XENSTORE_PAYLOAD_MAX (a broken peer).
    """
    msg_type, req_id, tx_id, length = HEADER.unpack(data[: HEADER.size])
    if length > XENSTORE_PAYLOAD_MAX:
        raise StoreError(f"xenstore reply claims {length} bytes: not a xenstored talking")
    return msg_type, req_id, tx_id, length


def strings(*parts: str) -> bytes:
    """NUL-terminated strings, the argument format of most requests."""
    return b"".join(p.encode() + b"\0" for p in parts)


def split_strings(payload: bytes) -> list[str]:
    """The NUL-separated strings of a reply (DIRECTORY, GET_PERMS, WATCH_EVENT)."""
    return [p.decode() for p in payload.split(b"\0")[:-1]] if payload else []


def _event(payload: bytes) -> tuple[str, str]:
    """(path, token) of an XS_WATCH_EVENT payload; missing parts read as ""."""
    path, token = [*split_strings(payload), "", ""][:2]
    return path, token


class XsClient:
    """One connection to xenstored's unix socket, as a dom0 tool (xl, a backend) holds.

    Requests are synchronous; watch events that arrive meanwhile are queued for
    :meth:`wait_watch`. Every blocking read is bounded by ``timeout``.
    """

    def __init__(self, sock: socket.socket, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self.sock = sock
        self.req_id = 0
        self.events: list[tuple[str, str]] = []

    @classmethod
    def connect(cls, path: Path, timeout: float = DEFAULT_TIMEOUT) -> XsClient:
        """:raise StoreError: nothing listens at ``path``."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # A blocking connect, bounded by SO_SNDTIMEO: xenstored listens with a backlog of
        # 1, and a non-blocking connect fails at once (EAGAIN) while another one waits.
        sec = int(timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", sec, int((timeout - sec) * 1e6)))
        address, dirfd = short_unix_path(path)
        try:
            sock.connect(address)
        except OSError as exc:
            sock.close()
            raise StoreError(f"cannot connect to xenstored at {path}: {exc}; is it running?") from exc
        finally:
            if dirfd is not None:
                os.close(dirfd)
        sock.settimeout(timeout)
        return cls(sock, timeout)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> XsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------- framing

    def _recv_exact(self, n: int, deadline: Deadline) -> bytes:
        buf = b""
        while len(buf) < n:
            left = deadline.remaining()
            if left <= 0:
                raise StoreError(f"xenstored did not answer within {self.timeout} s")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(n - len(buf))
            except TimeoutError as exc:
                raise StoreError(f"xenstored did not answer within {self.timeout} s") from exc
            except OSError as exc:
                raise StoreError(f"xenstored connection failed: {exc}") from exc
            if not chunk:
                raise StoreError("xenstored closed the connection (did it crash? see its log)")
            buf += chunk
        return buf

    def _recv_msg(self, deadline: Deadline) -> tuple[int, int, bytes]:
        msg_type, req_id, _tx, length = unpack_header(self._recv_exact(HEADER.size, deadline))
        payload = self._recv_exact(length, deadline) if length else b""
        return msg_type, req_id, payload

    def request(self, msg_type: int, payload: bytes, tx: int = 0, what: str = "") -> bytes:
        """Send one request and return its reply payload.

        :raise XsError: the daemon answered with an error.
        :raise StoreError: timeout, closed connection, or a malformed reply.
        """
        self.req_id = (self.req_id + 1) & 0xFFFFFFFF
        try:
            self.sock.sendall(pack(msg_type, self.req_id, tx, payload))
        except OSError as exc:
            raise StoreError(f"xenstored connection failed: {exc}") from exc
        deadline = Deadline(self.timeout)
        while True:
            rtype, rid, reply = self._recv_msg(deadline)
            if rtype == XS_WATCH_EVENT:
                self.events.append(_event(reply))
                continue
            if rtype == XS_ERROR:
                raise XsError(_OPS.get(msg_type, str(msg_type)), what, reply.rstrip(b"\0").decode())
            if rid != self.req_id or rtype != msg_type:
                raise StoreError(f"xenstore reply {rtype}/{rid} to request {msg_type}/{self.req_id}")
            return reply

    # ---------------------------------------------------------------- requests

    def read(self, path: str, tx: int = 0) -> str:
        return self.request(XS_READ, strings(path), tx, path).decode()

    def write(self, path: str, value: str, tx: int = 0) -> None:
        self.request(XS_WRITE, path.encode() + b"\0" + value.encode(), tx, path)

    def mkdir(self, path: str, tx: int = 0) -> None:
        self.request(XS_MKDIR, strings(path), tx, path)

    def rm(self, path: str, tx: int = 0) -> None:
        """Remove a subtree; a missing one is not an error (xl does the same)."""
        with contextlib.suppress(XsError):
            self.request(XS_RM, strings(path), tx, path)

    def directory(self, path: str, tx: int = 0) -> list[str]:
        return split_strings(self.request(XS_DIRECTORY, strings(path), tx, path))

    def get_perms(self, path: str, tx: int = 0) -> list[str]:
        return split_strings(self.request(XS_GET_PERMS, strings(path), tx, path))

    def set_perms(self, path: str, perms: list[str], tx: int = 0) -> None:
        """``perms`` as xenstore writes them: the owner first ("n0"), then "r5", "w5", "b5"."""
        self.request(XS_SET_PERMS, strings(path, *perms), tx, path)

    def transaction_start(self) -> int:
        return int(self.request(XS_TRANSACTION_START, b"\0").rstrip(b"\0"))

    def transaction_end(self, tx: int, commit: bool = True) -> None:
        """:raise XsError: EAGAIN when the transaction conflicted (retry it)."""
        self.request(XS_TRANSACTION_END, strings("T" if commit else "F"), tx, f"transaction {tx}")

    def watch(self, path: str, token: str) -> None:
        self.request(XS_WATCH, strings(path, token), 0, path)

    def unwatch(self, path: str, token: str) -> None:
        self.request(XS_UNWATCH, strings(path, token), 0, path)

    def introduce(self, domid: int, mfn: int, port: int) -> None:
        self.request(XS_INTRODUCE, strings(str(domid), str(mfn), str(port)), 0, f"domain {domid}")

    def release(self, domid: int) -> None:
        self.request(XS_RELEASE, strings(str(domid)), 0, f"domain {domid}")

    def get_domain_path(self, domid: int) -> str:
        return self.request(XS_GET_DOMAIN_PATH, strings(str(domid))).rstrip(b"\0").decode()

    def is_domain_introduced(self, domid: int) -> bool:
        return self.request(XS_IS_DOMAIN_INTRODUCED, strings(str(domid))).startswith(b"T")

    def wait_watch(self, token: str, timeout: float | None = None) -> str:
        """The path of the next queued or arriving watch event carrying ``token``.

        :raise StoreError: none arrived in time.
        """
        deadline = Deadline(self.timeout if timeout is None else timeout)
        while True:
            for i, (path, tok) in enumerate(self.events):
                if tok == token:
                    del self.events[i]
                    return path
            rtype, _rid, reply = self._recv_msg(deadline)
            if rtype != XS_WATCH_EVENT:
                raise StoreError(f"unexpected xenstore message {rtype} while waiting for watch {token!r}")
            self.events.append(_event(reply))

    def next_event(self, timeout: float | None = None) -> tuple[str, str]:
        """(path, token) of the next queued or arriving watch event, whatever its token.

        :raise StoreError: none arrived in time.
        """
        if not self.events:
            rtype, _rid, reply = self._recv_msg(Deadline(self.timeout if timeout is None else timeout))
            if rtype != XS_WATCH_EVENT:
                raise StoreError(f"unexpected xenstore message {rtype} while waiting for a watch event")
            return _event(reply)
        return self.events.pop(0)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[int]:
        """One attempt of a transaction; use :func:`in_transaction` to retry on EAGAIN."""
        tx = self.transaction_start()
        try:
            yield tx
        except BaseException:
            with contextlib.suppress(StoreError):
                self.transaction_end(tx, commit=False)
            raise
        self.transaction_end(tx, commit=True)


_OPS = {
    XS_DIRECTORY: "directory", XS_READ: "read", XS_GET_PERMS: "get-perms", XS_WATCH: "watch",
    XS_UNWATCH: "unwatch", XS_TRANSACTION_START: "transaction-start", XS_TRANSACTION_END: "transaction-end",
    XS_INTRODUCE: "introduce", XS_RELEASE: "release", XS_WRITE: "write", XS_MKDIR: "mkdir", XS_RM: "rm",
    XS_SET_PERMS: "set-perms",
}  # fmt: skip


def ensure_shim(timeout: float = 120.0) -> Path:
    """The xenstore shim (:data:`SHIM`), built with make when missing or older than its source.
    :raise StoreError: make or gcc failed (install gcc and make: scripts/bootstrap.sh)."""
    src = SHIM_DIR / "xsshim.c"
    if SHIM.is_file() and SHIM.stat().st_mtime >= src.stat().st_mtime:
        return SHIM
    argv = ["make", "-s", "-C", str(SHIM_DIR), f"BUILD={SHIM.parent}"]  # BUILD: the cache dir when installed
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise StoreError(f"building {SHIM} failed: {exc} {detail.decode(errors='replace')[-400:]}") from exc
    return SHIM


def available() -> str | None:
    """Why the store baseline cannot run here, or None."""
    if not XENSTORED.is_file():
        return f"{XENSTORED} missing: apt-get install xen-utils-4.17 (scripts/bootstrap.sh does)"
    if shutil.which("make") is None and not SHIM.is_file():
        return "make is needed to build tools/xsshim"
    return None


class XenStored:
    """Debian's real xenstored in a private run dir, started here and stopped by :meth:`stop`.

    ``-N`` keeps it in the foreground as our child (we own its lifetime; the shim also
    makes it die with the thread that started it, PR_SET_PDEATHSIG); it keeps
    its data base in memory (the 4.17 default). It introduces dom0 itself, through
    the files the shim serves as /proc/xen/xsd_port and xsd_kva.
    """

    def __init__(self, rundir: Path | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._tmp = None if rundir else tempfile.TemporaryDirectory(prefix="lightvm-xenstored-")
        self.rundir = rundir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.timeout = timeout
        self.socket = self.rundir / "socket"
        self.log = self.rundir / "xenstored.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> XenStored:
        """:raise StoreError: the daemon is missing, exited, or its socket did not appear."""
        why = available()
        if why:
            raise StoreError(why)
        shim = ensure_shim()
        self.rundir.mkdir(parents=True, exist_ok=True)
        (self.rundir / "xsd_port").write_text("1\n")
        (self.rundir / "xsd_kva").write_bytes(bytes(4096))
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LD_PRELOAD": str(shim),
            "XSSHIM_DIR": str(self.rundir),
            "XENSTORED_RUNDIR": str(self.rundir),
            "XSSHIM_PDEATHSIG": "1",  # dies with us: a killed benchmark leaves no daemon
            # relative to its cwd (the run dir): deep temp dirs overflow AF_UNIX's 108 bytes
            "XENSTORED_PATH": self.socket.name,
        }
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(XENSTORED), "-N", "-F", str(self.rundir / "xenstored.pid")],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.rundir,
            )  # fmt: skip
        deadline = Deadline(self.timeout)
        # the socket file appears at bind(), before listen(): up only once a connect works
        while not self._accepts():
            if self.proc.poll() is not None or deadline.expired():
                tail = self.log.read_text(errors="replace")[-400:]
                self.stop()
                raise StoreError(f"xenstored did not come up (see {self.log}): {tail.strip() or 'no output'}")
            time.sleep(0.002)
        return self

    def _accepts(self) -> bool:
        if not self.socket.exists():
            return False
        try:
            XsClient.connect(self.socket, self.timeout).close()
        except StoreError:
            return False
        return True

    def client(self) -> XsClient:
        return XsClient.connect(self.socket, self.timeout)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the timeout; reaped; run dir removed (if ours)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(self.timeout)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> XenStored:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------ domains, as xl does


@dataclass
class Domain:
    """What the store holds for one domain; enough to tear it down again."""

    domid: int
    name: str
    uuid: str = field(default_factory=lambda: str(uuidmod.uuid4()))
    memory_kib: int = 4096
    mac: str = "00:16:3e:00:00:01"
    ip: str = "10.0.0.2"

    @property
    def path(self) -> str:
        return f"/local/domain/{self.domid}"

    @property
    def vm_path(self) -> str:
        return f"/vm/{self.uuid}"

    @property
    def vif_frontend(self) -> str:
        return f"{self.path}/device/vif/0"

    @property
    def vif_backend(self) -> str:
        return f"/local/domain/0/backend/vif/{self.domid}/0"

    @property
    def token(self) -> str:
        return f"lightvm-dom{self.domid}"


def in_transaction(client: XsClient, body: Callable[[int], None], retries: int = 8) -> None:
    """Run ``body(tx)`` in a transaction, again from the start while it ends in EAGAIN.

    :raise XsError: EAGAIN ``retries`` times, or any other store error.
    """
    for attempt in range(retries):
        try:
            with client.transaction() as tx:
                body(tx)
            return
        except XsError as exc:
            if exc.errno_name != "EAGAIN" or attempt == retries - 1:
                raise


def _make_domain(c: XsClient, d: Domain, tx: int) -> None:
    """libxl__domain_make: the domain's directories with their permissions, and /vm/<uuid>."""
    ro = ["n0", f"r{d.domid}"]
    rw = [f"n{d.domid}"]
    c.rm(d.path, tx)
    for path, perms in (
        (d.path, ro), (d.vm_path, ro), (f"/libxl/{d.domid}", ["n0"]), (f"/libxl/{d.domid}/device", ["n0"]),
        (f"{d.path}/device", ro), (f"{d.path}/control", ro), (f"{d.path}/control/shutdown", rw),
        (f"{d.path}/control/feature-poweroff", rw), (f"{d.path}/control/feature-reboot", rw),
        (f"{d.path}/control/sysrq", rw), (f"{d.path}/data", rw), (f"{d.path}/drivers", rw),
        (f"{d.path}/feature", rw), (f"{d.path}/attr", rw), (f"{d.path}/error", rw),
    ):  # fmt: skip
        c.mkdir(path, tx)
        c.set_perms(path, perms, tx)
    c.write(f"{d.path}/vm", d.vm_path, tx)
    c.write(f"{d.path}/name", d.name, tx)
    c.write(f"{d.path}/domid", str(d.domid), tx)
    c.write(f"{d.vm_path}/uuid", d.uuid, tx)
    c.write(f"{d.vm_path}/name", d.name, tx)
    c.write(f"{d.vm_path}/start_time", f"{time.time():.2f}", tx)
    c.write(f"/libxl/{d.domid}/type", "pvh", tx)


def _build_post(c: XsClient, d: Domain, tx: int) -> None:
    """libxl__build_post: memory targets, the store and console rings, the vCPU."""
    for key, value in (
        ("memory/static-max", str(d.memory_kib)), ("memory/target", str(d.memory_kib)),
        ("memory/videoram", "0"), ("store/port", "1"), ("store/ring-ref", "1"),
        ("console/port", "2"), ("console/ring-ref", "2"), ("console/limit", "1048576"),
        ("console/type", "xenconsoled"), ("console/tty", "/dev/pts/0"), ("cpu/0/availability", "online"),
    ):  # fmt: skip
        c.write(f"{d.path}/{key}", value, tx)


def _add_vif(c: XsClient, d: Domain, tx: int) -> None:
    """libxl__device_generic_add for vif 0: backend (dom0-owned) and frontend (guest-owned) halves."""
    back, front = d.vif_backend, d.vif_frontend
    c.mkdir(back, tx)
    c.set_perms(back, ["n0", f"r{d.domid}"], tx)
    c.mkdir(front, tx)
    c.set_perms(front, [f"n{d.domid}", "r0"], tx)
    for key, value in (
        ("frontend", front), ("frontend-id", str(d.domid)), ("online", "1"), ("state", str(XENBUS_INITIALISING)),
        ("script", "/etc/xen/scripts/vif-bridge"), ("mac", d.mac), ("ip", d.ip), ("bridge", "lvbr0"),
        ("handle", "0"), ("type", "vif"),
    ):  # fmt: skip
        c.write(f"{back}/{key}", value, tx)
    for key, value in (
        ("backend", back), ("backend-id", "0"), ("state", str(XENBUS_INITIALISING)), ("handle", "0"), ("mac", d.mac),
    ):  # fmt: skip
        c.write(f"{front}/{key}", value, tx)
    c.write(f"/libxl/{d.domid}/device/vif/0", back, tx)


def domain_create(toolstack: XsClient, d: Domain) -> None:
    """The store traffic of ``xl create`` for one PVH domain with a console and one vif.

    Transaction 1 makes the domain (libxl__domain_make), transaction 2 writes the
    build results (libxl__build_post); then XS_INTRODUCE, transaction 3 adds the vif,
    and the toolstack waits through a watch until the backend (a running
    :class:`lightvm.bench.xenstore.guest.Netback`) is in InitWait with its hotplug script done,
    as libxl does before unpausing. The toolstack keeps a watch on @releaseDomain per
    domain (xl's per-domain death watcher).

    :raise StoreError: a request failed or the backend did not answer in time.
    """
    in_transaction(toolstack, lambda tx: _make_domain(toolstack, d, tx))
    in_transaction(toolstack, lambda tx: _build_post(toolstack, d, tx))
    toolstack.introduce(d.domid, 0, 1)
    # the whole backend dir: its state and the hotplug script's status both fire it
    toolstack.watch(d.vif_backend, d.token)
    toolstack.wait_watch(d.token)  # the initial firing
    in_transaction(toolstack, lambda tx: _add_vif(toolstack, d, tx))
    deadline = Deadline(toolstack.timeout)
    while toolstack.read(f"{d.vif_backend}/state") != str(XENBUS_INIT_WAIT) or not _hotplug_done(toolstack, d):
        if deadline.expired():
            raise StoreError(f"domain {d.domid}: the vif backend did not reach InitWait (is Netback running?)")
        toolstack.wait_watch(d.token, deadline.remaining())
    toolstack.unwatch(d.vif_backend, d.token)
    toolstack.watch("@releaseDomain", d.token)
    _forget(toolstack, d.token)


def _forget(c: XsClient, token: str) -> None:
    """Drop queued events of ``token`` and every @releaseDomain firing (the fleet's own
    releases fire all N death watches; a real xl would check its domain and go on)."""
    c.events = [(p, t) for p, t in c.events if t != token and p != "@releaseDomain"]


def _hotplug_done(c: XsClient, d: Domain) -> bool:
    try:
        return c.read(f"{d.vif_backend}/hotplug-status") == "connected"
    except XsError:
        return False


def domain_destroy(toolstack: XsClient, d: Domain) -> None:
    """``xl destroy``'s store traffic: release the domain, remove its nodes in one transaction.

    :raise StoreError: a request failed.
    """
    with contextlib.suppress(XsError):
        toolstack.unwatch("@releaseDomain", d.token)
    with contextlib.suppress(XsError):
        toolstack.release(d.domid)

    def body(tx: int) -> None:
        for path in (d.path, d.vm_path, f"/libxl/{d.domid}", f"/local/domain/0/backend/vif/{d.domid}"):
            toolstack.rm(path, tx)

    in_transaction(toolstack, body)
    _forget(toolstack, d.token)


__all__ = [
    "Domain", "StoreError", "XenStored", "XsClient", "XsError", "available", "domain_create",
    "domain_destroy", "ensure_shim", "in_transaction", "pack", "split_strings", "strings", "unpack_header",
]  # fmt: skip
