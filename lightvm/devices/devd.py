"""devd: the xendevd analog. Bridges, taps and addresses through pyroute2 only.

No ``ip`` subprocesses and no hotplug scripts: one :class:`Devd` wraps one
netlink socket (pyroute2 ``IPRoute``) and does every link operation itself.

Ownership. Every bridge and tap lightvm creates carries an interface alias
(IFLA_IFALIAS) that starts with ``lightvm:`` (``lightvm:net=<network>`` for a
network's bridge, ``lightvm:vm=<vm>/<vif>`` for a tap). An existing link by the
same name is adopted only when its alias says it is ours and whose it is;
otherwise :class:`~lightvm.errors.ForeignLinkError`, and nothing is touched.

Idempotence and undo. Every mutating method succeeds when the end state is
already there. It takes an optional :class:`~lightvm.undo.UndoStack` and pushes the
inverse step only for what it really created, so unwinding a failed multi-step setup
removes what that setup made and never a resource that existed before it.

Namespaces. ``Devd(netns="name")`` works entirely inside the named network
namespace (``/var/run/netns/name``) without moving the process there: it enters
the namespace per *thread* (:mod:`lightvm.devices.netns`) just long enough to
create its netlink socket, an ioctl socket and each ``/dev/net/tun``
descriptor, and makes taps with the TUN ioctls itself, not pyroute2's tuntap
(which forks into the namespace per call): 10-20x faster, as measured in
docs/qemu-notes.md, "Networking".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from lightvm.devices import rtlink
from lightvm.devices.netns import make_persistent_tap, netns_path, open_tun, thread_inside
from lightvm.errors import CapabilityError, ForeignLinkError, NetworkError
from lightvm.undo import UndoStack

if TYPE_CHECKING:
    from pyroute2.netlink.exceptions import NetlinkError


def _netlink_errors() -> type[NetlinkError]:
    """pyroute2's NetlinkError, imported on first use (in ``except`` clauses).

    pyroute2 takes ~130 ms to import; imported at module level, every CLI command
    paid it, though most (list, a VM with user networking) never touch a link.
    """
    from pyroute2.netlink.exceptions import NetlinkError

    return cast("type[NetlinkError]", NetlinkError)


ALIAS_PREFIX = "lightvm:"
IFNAMSIZ = 16  # including the NUL: names are at most 15 bytes
_SIOCGIFINDEX = 0x8933
_IFF_UP = 0x1


# ---------------------------------------------------------------- helpers


@dataclass(frozen=True)
class LinkInfo:
    """What devd needs to know about one link."""

    name: str
    index: int
    kind: str  # "bridge", "tun", "veth", "" for a physical device
    mtu: int
    master: int  # ifindex of the bridge it is attached to, 0 if none
    up: bool
    alias: str
    mac: str = ""  # IFLA_ADDRESS, lower case

    @property
    def ours(self) -> bool:
        return self.alias.startswith(ALIAS_PREFIX)


def check_ifname(name: str) -> str:
    """Validate a Linux interface name (1..15 bytes, no '/', ':' or space).

    :raise NetworkError: if it is not a usable name.
    """
    raw = name.encode()
    if not 1 <= len(raw) < IFNAMSIZ or any(c in name for c in "/: \t\n") or name in (".", ".."):
        raise NetworkError(f"bad interface name {name!r}: 1..15 characters, no '/', ':' or whitespace")
    return name


def tap_alias(vm_name: str, index: int) -> str:
    return f"{ALIAS_PREFIX}vm={vm_name}/{index}"


def bridge_alias(network: str) -> str:
    return f"{ALIAS_PREFIX}net={network}"


_cap_net_admin: dict[int, bool] = {}  # pid -> the answer (a forked child asks again)


def has_cap_net_admin() -> bool:
    """True when this process really holds CAP_NET_ADMIN (CapEff bit 12).

    Read once per process: lightvm never changes its own capabilities, and a pooled
    create with user networking asked on every reply (/proc/self/status: tens of us)."""
    pid = os.getpid()
    known = _cap_net_admin.get(pid)
    if known is None:
        known = _cap_net_admin[pid] = _read_cap_net_admin()
    return known


def _read_cap_net_admin() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 12))
    except (OSError, ValueError):
        pass
    return False


# ---------------------------------------------------------------- devd


class Devd:
    """Bridges, taps and addresses in one network namespace, over one netlink socket.

    ``Devd()`` works in the namespace of the thread that made it (the host's);
    ``Devd(netns="name")`` in a named namespace that must already exist.
    Close it (or use ``with``) to release its sockets. Like pyroute2's
    ``IPRoute``, one Devd must not be used by two threads at once: give each
    thread (e.g. a pool refiller) its own.

    :raise CapabilityError: if netlink or the namespace cannot be opened.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._nsfd: int | None = None
        self._ipr: Any = None
        self._ctl: socket.socket | None = None
        self._rt: socket.socket | None = None  # rtlink's, for hand_over (made on first use)
        self._open()

    def _open(self) -> None:
        """Open the namespace and sockets; also after :meth:`close` (undo steps may run late)."""
        if self._ipr is not None:
            return
        try:
            if self.netns is not None and self._nsfd is None:
                path = netns_path(self.netns)
                try:
                    self._nsfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as exc:
                    raise NetworkError(f"network namespace {self.netns!r} ({path}): {exc.strerror}") from exc
            with self._enter():
                self._ctl = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                from pyroute2 import IPRoute  # see _netlink_errors: imported on first use

                self._ipr = IPRoute()
        except PermissionError as exc:
            self.close()
            raise CapabilityError(f"cannot open netlink/namespace: {exc}; devd needs CAP_NET_ADMIN") from exc
        except BaseException:
            self.close()
            raise

    # -- lifetime --

    def close(self) -> None:
        """Release the sockets; a later call reopens them (so late undo steps still work)."""
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._ctl is not None:
            self._ctl.close()
            self._ctl = None
        if self._rt is not None:
            self._rt.close()
            self._rt = None
        if self._nsfd is not None:
            os.close(self._nsfd)
            self._nsfd = None

    def __enter__(self) -> Devd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """Run the block with the calling thread inside our namespace (no-op for the host's).

        Sockets, ``/dev/net/tun`` descriptors and child processes made in the
        block belong to the namespace: the toolstack launches QEMU inside it so
        that ``-netdev tap,ifname=...`` finds taps made in a namespace.
        """
        self._open()
        with self._enter():
            yield

    @contextlib.contextmanager
    def _enter(self) -> Iterator[None]:
        if self.netns is None:
            yield
            return
        if self._nsfd is None:  # never fall back to the host's namespace
            raise NetworkError(f"devd for namespace {self.netns!r} is closed")
        with thread_inside(self._nsfd):
            yield

    @property
    def ipr(self) -> Any:
        self._open()
        return self._ipr

    # -- queries --

    def ifindex(self, name: str) -> int | None:
        """The ifindex of ``name`` in our namespace, or None (one ioctl, no netlink)."""
        self._open()
        assert self._ctl is not None
        ifr = struct.pack("16si20x", name.encode(), 0)
        try:
            out = fcntl.ioctl(self._ctl.fileno(), _SIOCGIFINDEX, ifr)
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                return None
            raise NetworkError(f"cannot look up interface {name}: {exc.strerror}") from exc
        index: int = struct.unpack_from("i", out, 16)[0]
        return index

    def link(self, name: str) -> LinkInfo | None:
        """Everything devd checks about link ``name``, or None if it does not exist."""
        try:
            msgs = self.ipr.link("get", ifname=check_ifname(name))
        except _netlink_errors() as exc:
            if exc.code == errno.ENODEV:
                return None
            raise _netlink_error(f"cannot read interface {name}: {exc}", exc) from exc
        return _link_info(msgs[0])

    def links(self) -> list[LinkInfo]:
        """Every link in our namespace."""
        return [_link_info(msg) for msg in self.ipr.link("dump")]

    def ports(self, bridge: str) -> list[str]:
        """Names of the links attached to ``bridge`` (empty if it does not exist)."""
        index = self.ifindex(bridge)
        if index is None:
            return []
        return sorted(info.name for info in self.links() if info.master == index)

    def addresses(self) -> list[tuple[str, ipaddress.IPv4Interface]]:
        """Every IPv4 address in our namespace, as (interface name, address/prefix)."""
        names = {info.index: info.name for info in self.links()}
        result = []
        for msg in self.ipr.addr("dump", family=socket.AF_INET):
            addr = msg.get("IFA_ADDRESS") or msg.get("IFA_LOCAL")
            if addr:
                iface = ipaddress.IPv4Interface(f"{addr}/{msg['prefixlen']}")
                result.append((names.get(msg["index"], str(msg["index"])), iface))
        return result

    # -- bridges --

    def ensure_bridge(
        self,
        name: str,
        mtu: int = 1500,
        alias: str = ALIAS_PREFIX,
        undo: UndoStack | None = None,
        mac: str | None = None,
    ) -> int:
        """Make sure bridge ``name`` exists, is ours (alias ``alias``), up, with ``mtu``.

        :param mac: the bridge's own MAC, set and kept. Without one, Linux gives a bridge the
            lowest MAC of its ports and changes it as ports come and go: when the port whose
            MAC it was leaves (its VM destroyed), every guest that resolved the bridge's
            address before sends to a MAC nobody has until its ARP entry expires.
        :return: the bridge's ifindex.
        :raise ForeignLinkError: a link by that name exists that is not this bridge.
        :raise NetworkError: netlink refused.
        """
        want = {"address": mac.lower()} if mac else {}
        info = self.link(name)
        if info is not None:
            _require_ours(info, "bridge", alias)
            if info.mtu != mtu or not info.up or (mac and info.mac != mac.lower()):
                self._set(info.index, f"set bridge {name} mtu {mtu} up", mtu=mtu, state="up", **want)
            return info.index
        try:
            self.ipr.link("add", ifname=name, kind="bridge")
        except _netlink_errors() as exc:
            raise _netlink_error(f"cannot create bridge {name}: {exc}", exc) from exc
        index = self.ifindex(name)
        if index is None:
            raise NetworkError(f"bridge {name} vanished right after it was created")
        if undo is not None:
            undo.push(f"create bridge {name}", lambda: self.delete_bridge(name, force=True))
        try:
            # No STP: a port forwards at once instead of after 2x15 s of learning.
            self._set(index, f"configure bridge {name}", ifalias=alias, mtu=mtu, state="up", **want)
        except NetworkError:
            if undo is None:
                self._delete_index(index)
            raise
        return index

    def delete_bridge(self, name: str, force: bool = False) -> bool:
        """Delete our bridge ``name``; missing is fine.

        :param force: delete even when links are still attached (the kernel detaches them).
        :return: True if a bridge was deleted.
        :raise ForeignLinkError: ``name`` is not a lightvm bridge.
        :raise NetworkError: ports are attached and not ``force``.
        """
        info = self.link(name)
        if info is None:
            return False
        _require_ours(info, "bridge", None)
        if not force:
            ports = self.ports(name)
            if ports:
                raise NetworkError(f"bridge {name} still has ports {', '.join(ports)}; destroy those VMs first")
        self._delete_index(info.index)
        return True

    # -- taps --

    def create_tap(
        self,
        name: str,
        mtu: int = 1500,
        bridge: str | None = None,
        owner_uid: int | None = None,
        alias: str = ALIAS_PREFIX,
        undo: UndoStack | None = None,
    ) -> int:
        """Create persistent tap ``name`` (or adopt ours), set MTU, attach to ``bridge``, bring up.

        The bridge may be a foreign one (a user's own ``br0`` named in a spec):
        attaching a tap we own to it is fine; it must exist.

        :return: the tap's ifindex.
        :raise ForeignLinkError: a link by that name exists and is not this tap.
        :raise NetworkError: the bridge is missing, or the kernel refused a step.
        """
        check_ifname(name)
        master = 0
        if bridge is not None:
            found = self.ifindex(bridge)
            if found is None:
                raise NetworkError(f"bridge {bridge} does not exist; create its network first")
            master = found
        index = self.ifindex(name)
        if index is not None:
            info = self.link(name)
            if info is None:
                raise NetworkError(f"tap {name} vanished while being checked")
            _require_ours(info, "tun", alias)
            if info.mtu != mtu or info.master != master or not info.up:
                self._set(info.index, f"configure tap {name}", mtu=mtu, master=master, state="up")
            return info.index
        self._tun_create(name, owner_uid)
        index = self.ifindex(name)
        if index is None:
            raise NetworkError(f"tap {name} vanished right after it was created")
        if undo is not None:
            undo.push(f"create tap {name}", lambda: self.delete_tap(name))
        try:
            self._set(index, f"configure tap {name}", ifalias=alias, mtu=mtu, master=master, state="up")
        except NetworkError:
            if undo is None:
                self._delete_index(index)
            raise
        return index

    def attach(self, tap: str, bridge: str, undo: UndoStack | None = None) -> None:
        """Attach ``tap`` to ``bridge`` (no-op if it already is).

        :raise NetworkError: either link is missing or the kernel refused.
        """
        tap_index = self._require_index(tap)
        bridge_index = self._require_index(bridge)
        info = self.link(tap)
        if info is not None and info.master == bridge_index:
            return
        self._set(tap_index, f"attach {tap} to {bridge}", master=bridge_index)
        if undo is not None:
            undo.push(f"attach {tap} to {bridge}", lambda: self.detach(tap))

    def hand_over(self, tap: str, bridge: str, mtu: int, alias: str) -> None:
        """Give our tap ``tap`` (made earlier, for a prepared shell) to its VM in one
        netlink request: attach it to ``bridge``, set ``mtu`` and the VM's ``alias``
        (so :func:`lightvm.devices.net.forget_vm` finds it by the VM's name), bring it up.

        :raise NetworkError: either link is missing or the kernel refused.
        """
        tap_index = self._require_index(tap)
        bridge_index = self._require_index(bridge)
        # Hand-encoded (lightvm/devices/rtlink.py): the one netlink request of a pooled
        # create, where pyroute2's encoding cost 3x the kernel's work.
        if self._rt is None:
            with self._enter():
                self._rt = rtlink.open_socket()
        try:
            rtlink.set_link(self._rt, tap_index, bridge_index, mtu, alias)
        except OSError as exc:
            what = f"cannot attach {tap} to {bridge}: {exc.strerror or exc}"
            if exc.errno == errno.EPERM:
                raise CapabilityError(f"{what}; needs CAP_NET_ADMIN (run as root)") from exc
            raise NetworkError(what) from exc

    def detach(self, tap: str) -> None:
        """Detach ``tap`` from whatever bridge it is on (missing tap is fine)."""
        info = self.link(tap)
        if info is None or info.master == 0:
            return
        self._set(info.index, f"detach {tap}", master=0)

    def delete_tap(self, name: str) -> bool:
        """Detach and delete our tap ``name``; missing is fine.

        :return: True if a tap was deleted.
        :raise ForeignLinkError: ``name`` is not a lightvm tap.
        """
        info = self.link(name)
        if info is None:
            return False
        _require_ours(info, "tun", None)
        self._delete_index(info.index)  # deleting a port removes it from its bridge
        return True

    # -- addresses, sysctls, tools in the namespace --

    def ensure_address(self, ifname: str, iface: ipaddress.IPv4Interface, undo: UndoStack | None = None) -> None:
        """Put ``iface`` (address/prefix) on ``ifname``; present already is fine."""
        index = self._require_index(ifname)
        try:
            self.ipr.addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except _netlink_errors() as exc:
            if exc.code == errno.EEXIST:
                return
            raise _netlink_error(f"cannot add address {iface} to {ifname}: {exc}", exc) from exc
        if undo is not None:
            undo.push(f"address {iface} on {ifname}", lambda: self.delete_address(ifname, iface))

    def delete_address(self, ifname: str, iface: ipaddress.IPv4Interface) -> None:
        """Remove ``iface`` from ``ifname``; missing link or address is fine."""
        index = self.ifindex(ifname)
        if index is None:
            return
        try:
            self.ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except _netlink_errors() as exc:
            if exc.code not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                raise _netlink_error(f"cannot remove address {iface} from {ifname}: {exc}", exc) from exc

    def write_sysctl(self, key: str, value: str) -> None:
        """Write a /proc/sys/net value for our namespace (e.g. ``ipv4/ip_forward``)."""
        path = Path("/proc/sys/net") / key
        try:
            with self.inside(), open(path, "w") as fh:  # /proc/sys/net follows the opener's netns
                fh.write(value)
        except OSError as exc:
            raise NetworkError(f"cannot write {path}: {exc.strerror}") from exc

    def run(self, argv: list[str], stdin: str = "", timeout: float = 5.0) -> str:
        """Run a host tool inside our namespace (no shell, with a timeout); return stdout.

        Used only for nftables masquerade, which has no practical netlink API here.

        :raise CapabilityError: the tool is not installed.
        :raise NetworkError: it failed or timed out.
        """
        try:
            with self.inside():  # the child inherits the calling thread's namespace
                done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        except FileNotFoundError as exc:
            raise CapabilityError(f"{argv[0]} is not installed (Debian: apt-get install nftables)") from exc
        except subprocess.TimeoutExpired as exc:
            raise NetworkError(f"{' '.join(argv)} timed out after {timeout} s") from exc
        if done.returncode != 0:
            raise NetworkError(f"{' '.join(argv)} failed (exit {done.returncode}): {done.stderr.strip()}")
        return done.stdout

    # -- internals --

    def _require_index(self, name: str) -> int:
        index = self.ifindex(name)
        if index is None:
            raise NetworkError(f"interface {name} does not exist")
        return index

    def _set(self, index: int, what: str, **attrs: Any) -> None:
        try:
            self.ipr.link("set", index=index, **attrs)
        except _netlink_errors() as exc:
            raise _netlink_error(f"cannot {what}: {exc}", exc) from exc

    def _delete_index(self, index: int) -> None:
        try:
            self.ipr.link("del", index=index)
        except _netlink_errors() as exc:
            if exc.code != errno.ENODEV:
                raise _netlink_error(f"cannot delete interface {index}: {exc}", exc) from exc

    def _tun_create(self, name: str, owner_uid: int | None) -> None:
        with self.inside():
            fd = open_tun()
        make_persistent_tap(fd, name, owner_uid)


def _netlink_error(message: str, exc: NetlinkError) -> NetworkError:
    """The error for a refused netlink request; EPERM means a missing capability."""
    if exc.code == errno.EPERM:
        return CapabilityError(f"{message.rsplit(':', 1)[0]}: not permitted; needs CAP_NET_ADMIN (run as root)")
    return NetworkError(message)


def _link_info(msg: Any) -> LinkInfo:
    return LinkInfo(
        name=msg.get("IFLA_IFNAME") or "",
        index=int(msg["index"]),
        kind=msg.get(("linkinfo", "kind")) or "",
        mtu=int(msg.get("IFLA_MTU") or 0),
        master=int(msg.get("IFLA_MASTER") or 0),
        up=bool(msg["flags"] & _IFF_UP),
        alias=msg.get("IFLA_IFALIAS") or "",
        mac=(msg.get("IFLA_ADDRESS") or "").lower(),
    )


def _require_ours(info: LinkInfo, kind: str, alias: str | None) -> None:
    """Refuse a link that is not a lightvm ``kind`` (and, if given, not tagged ``alias``)."""
    if not info.ours or info.kind != kind:
        what = info.kind or "device"
        raise ForeignLinkError(
            f"interface {info.name} exists ({what}, alias {info.alias!r}) and was not created by lightvm; "
            "pick another name or remove it yourself"
        )
    if alias is not None and alias != ALIAS_PREFIX and info.alias != alias:
        raise ForeignLinkError(f"interface {info.name} belongs to {info.alias!r}, not {alias!r}")
