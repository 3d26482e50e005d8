"""The vif device module: spec -> tap (or QEMU user networking) -> QEMU args + NoXS vif page.

Vif spec keys, their types and defaults: docs/config.md (the user's reference).

``network`` and ``bridge`` are exclusive. A vif naming neither uses QEMU user
networking. A bridge that belongs to a lightvm network is treated as that network.

Modes. With CAP_NET_ADMIN (checked for real: CapEff bit 12) vifs get a
persistent tap ``lv<6 hex of the VM name>-<index>`` created by
:class:`~lightvm.devices.devd.Devd`, attached to the bridge and up before QEMU starts;
QEMU opens it by name (``script=no``). Without it (a laptop, a non-root user),
every vif uses QEMU user networking (slirp): the guest gets 10.0.2.15/24,
gateway 10.0.2.2, in its NoXS page (no DHCP), and ``publish`` becomes QEMU
``hostfwd`` port forwards. :func:`choose_mode` picks; :meth:`NetContext.describe`
says which, for the CLI to print. ``publish`` on a tap vif is an error (the guest
is reachable at its own address there).

Toolstack usage, in order (each step's undo goes on one UndoStack)::

    specs = [net.validate(v, f"vifs[{i}]") for i, v in enumerate(vm.vifs)]
    with net.NetContext.open(state_dir, mode="auto") as ctx, UndoStack() as undo:
        print(ctx.describe())
        vifs = net.prepare_all(specs, vm.name, ctx, undo, publish=args.publish)
        argv += [a for v in vifs for a in net.qemu_args(v, machine="microvm")]
        page.vifs = [net.noxs_config(v) for v in vifs]
        save [v.to_dict() for v in vifs] in the VM's state
        with ctx.inside(): launch QEMU   # only matters with a netns (tests, LIGHTVM_NETNS)
        undo.commit()
    # destroy (after QEMU has exited):
    for d in saved: net.release(net.PreparedVif.from_dict(d), vm.name, ctx)
    net.forget_vm(vm.name, ctx)   # belt and braces when the state was lost
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lightvm.devices.devd import ALIAS_PREFIX, Devd, has_cap_net_admin, tap_alias
from lightvm.devices.ipam import check_mac, mac_for_ip
from lightvm.devices.network import NetworkStore
from lightvm.errors import CapabilityError, ForeignLinkError, NetworkError, SpecError
from lightvm.noxs import VifConfig, parse_mac
from lightvm.undo import UndoStack

USER_NET = "10.0.2.0/24"
USER_IP = "10.0.2.15"
USER_PREFIX = 24
USER_GATEWAY = "10.0.2.2"
USER_MTU = 1500  # a user vif's unless its spec says otherwise
TAP_NAME_ATTEMPTS = 4
VIF_KEYS = ("network", "bridge", "ip", "gateway", "mac", "mtu", "publish")
_PUBLISH_RE = re.compile(
    r"^(?:(?P<addr>\d{1,3}(?:\.\d{1,3}){3}):)?(?P<host>\d{1,5}):(?P<guest>\d{1,5})(?:/(?P<proto>tcp|udp))?$"
)


class NetMode(enum.Enum):
    TAP = "tap"
    USER = "user"


@dataclass(frozen=True)
class PortForward:
    """One ``--publish`` entry: host [addr:]port -> guest port."""

    host_port: int
    guest_port: int
    proto: str = "tcp"
    host_addr: str = ""

    def hostfwd(self) -> str:
        return f"hostfwd={self.proto}:{self.host_addr}:{self.host_port}-:{self.guest_port}"

    def __str__(self) -> str:
        addr = f"{self.host_addr}:" if self.host_addr else ""
        return f"{addr}{self.host_port}->{self.guest_port}/{self.proto}"


def parse_publish(text: str | PortForward, where: str = "publish") -> PortForward:
    """Parse ``[addr:]hostport:guestport[/tcp|udp]``.

    :raise SpecError: malformed or out-of-range ports.
    """
    if isinstance(text, PortForward):
        return text
    match = _PUBLISH_RE.match(str(text).strip())
    if not match:
        raise SpecError(f"{where}: {text!r} is not HOSTPORT:GUESTPORT (e.g. 8013:13, 127.0.0.1:8080:80/tcp)")
    host, guest = int(match["host"]), int(match["guest"])
    if not (1 <= host <= 65535 and 1 <= guest <= 65535):
        raise SpecError(f"{where}: ports in {text!r} must be 1..65535")
    addr = match["addr"] or ""
    if addr:
        try:
            ipaddress.IPv4Address(addr)
        except ValueError as exc:
            raise SpecError(f"{where}: {exc}") from None
    return PortForward(host, guest, match["proto"] or "tcp", addr)


@dataclass(frozen=True)
class ValidVif:
    """A vif entry that passed :func:`validate`: the NIC to build (keys: the module docstring)."""

    network: str | None = None
    bridge: str | None = None
    ip: str | None = None  # "a.b.c.d/prefix" or, on a network, "a.b.c.d"
    gateway: str | None = None
    mac: str | None = None
    mtu: int | None = None
    publish: tuple[PortForward, ...] = ()


def validate(spec_vif: Any, where: str = "vif") -> ValidVif:
    """Check one vif entry: a mapping, or an object with the same attributes (spec.VifSpec).

    Pure: touches nothing on the host.

    :raise SpecError: naming ``where`` and the key.
    """
    if isinstance(spec_vif, ValidVif):
        table: dict[str, Any] = asdict(spec_vif)
    elif isinstance(spec_vif, Mapping):
        table = dict(spec_vif)
    else:
        table = {key: getattr(spec_vif, key, None) for key in VIF_KEYS}
    unknown = sorted(set(table) - set(VIF_KEYS))
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(VIF_KEYS)}")
    network, bridge = table.get("network"), table.get("bridge")
    if network and bridge:
        raise SpecError(f"{where}: give either 'network' or 'bridge', not both")
    for key in ("network", "bridge", "ip", "gateway", "mac"):
        if table.get(key) is not None and not isinstance(table[key], str):
            raise SpecError(f"{where}.{key}: expected a string")
    if bridge is not None and not re.match(r"^[A-Za-z0-9_.-]{1,15}$", bridge):
        raise SpecError(f"{where}.bridge: {bridge!r} is not a valid interface name (1..15 chars)")
    ip = table.get("ip")
    if ip is not None:
        try:
            iface = ipaddress.IPv4Interface(ip)
        except ValueError as exc:
            raise SpecError(f"{where}.ip: {exc}") from None
        if "/" not in ip and not network:
            raise SpecError(f"{where}.ip: {ip!r} needs a prefix length on a bridge, e.g. {ip}/24")
        ip = f"{iface.ip}/{iface.network.prefixlen}" if "/" in ip else str(iface.ip)
    if bridge is not None and ip is None:
        raise SpecError(f"{where}: a vif on bridge {bridge} needs 'ip' (a.b.c.d/prefix); or use a network")
    gateway = table.get("gateway")
    if gateway is not None:
        try:
            gateway = str(ipaddress.IPv4Address(gateway))
        except ValueError as exc:
            raise SpecError(f"{where}.gateway: {exc}") from None
    mac = table.get("mac")
    if mac is not None:
        try:
            mac = check_mac(mac)
        except SpecError as exc:
            raise SpecError(f"{where}.mac: {exc}") from None
    mtu = table.get("mtu")
    if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool) or not 68 <= mtu <= 9000):
        raise SpecError(f"{where}.mtu: expected an integer in 68..9000, got {mtu!r}")
    raw_publish = table.get("publish") or ()
    if isinstance(raw_publish, str):
        raw_publish = (raw_publish,)
    publish = tuple(parse_publish(p, f"{where}.publish") for p in raw_publish)
    return ValidVif(network, bridge, ip, gateway, mac, mtu, publish)


def choose_mode(requested: str | NetMode = "auto") -> NetMode:
    """``auto``: tap with CAP_NET_ADMIN, else user networking; ``tap``/``user`` forced.

    :raise CapabilityError: ``tap`` requested without CAP_NET_ADMIN.
    :raise SpecError: an unknown mode.
    """
    value = requested.value if isinstance(requested, NetMode) else requested
    if value == "auto":
        return NetMode.TAP if has_cap_net_admin() else NetMode.USER
    if value == "tap":
        if not has_cap_net_admin():
            raise CapabilityError("tap networking needs CAP_NET_ADMIN (run as root) or use --net user")
        return NetMode.TAP
    if value == "user":
        return NetMode.USER
    raise SpecError(f"network mode {value!r}: expected auto, tap or user")


@dataclass
class NetContext:
    """What vif preparation needs from the host, opened once per toolstack operation.

    ``netns`` (or the LIGHTVM_NETNS environment variable) makes every tap and
    bridge live in that network namespace instead of the host's: tests and
    benchmarks use it. LIGHTVM_NET_MODE=user|tap overrides the ``auto`` choice
    (e.g. root wanting ``--publish``) until the CLI grows a ``--net`` option.
    """

    state_dir: Path
    mode: NetMode
    netns: str | None = None
    tap_owner: int | None = None
    _devd: Devd | None = field(default=None, repr=False)
    _store: NetworkStore | None = field(default=None, repr=False)

    @classmethod
    def open(cls, state_dir: Path | str, mode: str | NetMode = "auto", netns: str | None = None) -> NetContext:
        """Choose the mode (``auto``: ``$LIGHTVM_NET_MODE`` if set, else by capability) and namespace.

        :raise CapabilityError: ``mode="tap"`` without CAP_NET_ADMIN.
        """
        if mode == "auto":
            mode = os.environ.get("LIGHTVM_NET_MODE") or "auto"
        return cls(Path(state_dir), choose_mode(mode), netns if netns is not None else os.environ.get("LIGHTVM_NETNS"))

    def devd(self) -> Devd:
        if self._devd is None:
            self._devd = Devd(self.netns)
        return self._devd

    def store(self) -> NetworkStore:
        if self._store is None:
            self._store = NetworkStore(self.state_dir, ops=self.devd() if self.mode is NetMode.TAP else None)
        return self._store

    def inside(self) -> contextlib.AbstractContextManager[None]:
        """Where to spawn QEMU: inside ``netns`` when there is one (taps live there), else a no-op."""
        return self.devd().inside() if self.netns is not None else contextlib.nullcontext()

    def describe(self) -> str:
        """One line for the CLI: which networking mode and why."""
        if self.mode is NetMode.TAP:
            return "networking: tap (CAP_NET_ADMIN available: taps on bridges, addresses from the network)"
        return f"networking: user (QEMU user networking, guest {USER_IP}/{USER_PREFIX}; reach it with --publish)"

    def close(self) -> None:
        if self._devd is not None:
            self._devd.close()
            self._devd = None
        self._store = None

    def __enter__(self) -> NetContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class PreparedVif:
    """A vif's host side, as created; JSON-able for the VM's state folder."""

    index: int
    mode: NetMode
    mac: str
    ip: str
    prefix: int
    gateway: str
    mtu: int
    tap: str = ""  # tap mode only
    bridge: str = ""  # tap mode only
    network: str | None = None  # set when the address is a lease to release
    publish: tuple[PortForward, ...] = ()

    @property
    def netdev_id(self) -> str:
        return f"n{self.index}"

    def describe(self) -> str:
        where = f"tap {self.tap} on {self.bridge}" if self.mode is NetMode.TAP else "user networking"
        fwd = f", publish {', '.join(map(str, self.publish))}" if self.publish else ""
        return f"vif{self.index}: {self.ip}/{self.prefix} gw {self.gateway} mac {self.mac} ({where}{fwd})"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mode"] = self.mode.value
        data["publish"] = [asdict(p) for p in self.publish]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreparedVif:
        values = dict(data)
        values["mode"] = NetMode(values["mode"])
        values["publish"] = tuple(PortForward(**p) for p in values.get("publish", ()))
        return cls(**values)


def tap_name(vm_name: str, index: int, attempt: int = 0) -> str:
    """``lv<6 hex>-<index>`` (<= 15 chars); ``attempt`` > 0 rehashes after a name clash."""
    if not 0 <= index < 1000:
        raise SpecError(f"vif index {index} out of range")
    digest = hashlib.sha256(f"{vm_name}#{attempt}".encode()).hexdigest()[:6]
    return f"lv{digest}-{index}"


def user_mac(vm_name: str, index: int) -> str:
    """A deterministic locally administered unicast MAC for a user-networking vif."""
    digest = hashlib.sha256(f"{vm_name}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def prepare(
    vif: ValidVif,
    vm_name: str,
    index: int,
    ctx: NetContext,
    undo: UndoStack,
    publish: Sequence[str | PortForward] = (),
) -> PreparedVif:
    """Create vif ``index``'s host side and push its undo steps onto ``undo``.

    Network vif: lease (undo: release), then tap on the network's bridge
    (undo: delete). Bridge vif: tap on that bridge. User networking: nothing
    on the host. ``publish`` adds port forwards (user networking only).

    :raise SpecError: publish on a tap vif, a fixed ip/mac that is taken or off-subnet.
    :raise NotFoundError: the named network does not exist.
    :raise AddressExhaustedError: the network is full.
    :raise ForeignLinkError: every candidate tap name is taken by something not ours.
    :raise NetworkError: the kernel refused a step.
    """
    forwards = vif.publish + tuple(parse_publish(p) for p in publish)
    if ctx.mode is NetMode.USER or not (vif.network or vif.bridge):
        return user_vif(vif, vm_name, index, forwards)
    if forwards:
        raise SpecError(
            f"vif {index}: --publish needs user networking (--net user); "
            "this vif is a tap, reach the guest at its own address"
        )
    prepared = address(vif, vm_name, index, ctx, undo)
    devd = ctx.devd()
    alias = tap_alias(vm_name, index)
    for attempt in range(TAP_NAME_ATTEMPTS):
        name = tap_name(vm_name, index, attempt)
        try:
            devd.create_tap(name, prepared.mtu, prepared.bridge, owner_uid=ctx.tap_owner, alias=alias, undo=undo)
        except ForeignLinkError:
            if attempt == TAP_NAME_ATTEMPTS - 1:
                raise
            continue
        return replace(prepared, tap=name)
    raise NetworkError("unreachable")  # pragma: no cover


def user_vif(
    vif: ValidVif, vm_name: str, index: int, forwards: tuple[PortForward, ...] = (), default_mac: str = ""
) -> PreparedVif:
    """Vif ``index`` on QEMU user networking: the fixed guest address, the spec's MAC, else
    ``default_mac``, else one from the VM's name; ``forwards`` as host port forwards.
    Nothing on the host."""
    mac = vif.mac or default_mac or user_mac(vm_name, index)
    return PreparedVif(
        index, NetMode.USER, mac, USER_IP, USER_PREFIX, USER_GATEWAY, vif.mtu or USER_MTU, publish=forwards
    )


def address(vif: ValidVif, vm_name: str, index: int, ctx: NetContext, undo: UndoStack) -> PreparedVif:
    """The address, bridge and MTU of tap vif ``index`` (no tap yet): a lease from the
    vif's network (undo: release), or the spec's own address on a plain bridge. The one
    place both a cold create (:func:`prepare`) and a pooled shell's execute
    (:mod:`lightvm.devices.shellnet`) get a tap vif's address, so that they agree.

    :raise SpecError: a fixed ip/mac that is taken or off-subnet, an mtu over the network's.
    :raise NotFoundError: the named network does not exist.
    :raise AddressExhaustedError: the network is full.
    :raise NetworkError: the plain bridge does not exist.
    """
    store = ctx.store()
    network = vif.network
    if network is None and vif.bridge is not None:
        owner = store.by_bridge(vif.bridge)
        network = owner.name if owner is not None else None
    if network is not None:
        fixed_ip = vif.ip.split("/", 1)[0] if vif.ip else None
        addr = store.lease(network, vm_name, index, ip=fixed_ip, mac=vif.mac)
        undo.push(f"lease {addr.ip} on {network}", lambda: store.release(vm_name, network, index))
        if vif.mtu is not None and vif.mtu > addr.mtu:
            raise SpecError(f"vif {index}: mtu {vif.mtu} exceeds network {network}'s mtu {addr.mtu}")
        if vif.ip and "/" in vif.ip and int(vif.ip.split("/", 1)[1]) != addr.prefix:
            raise SpecError(f"vif {index}: ip {vif.ip} has another prefix than network {network} (/{addr.prefix})")
        if ctx.devd().ifindex(addr.bridge) is None:
            store.ensure_up(network)  # the bridge is gone (host reboot?): rebuild it
        prepared = PreparedVif(
            index,
            NetMode.TAP,
            mac=addr.mac,
            ip=addr.ip,
            prefix=addr.prefix,
            gateway=vif.gateway or addr.gateway,
            mtu=vif.mtu or addr.mtu,
            bridge=addr.bridge,
            network=network,
        )
    else:
        assert vif.bridge is not None and vif.ip is not None  # validate() guarantees both
        info = ctx.devd().link(vif.bridge)
        if info is None or info.kind != "bridge":
            raise NetworkError(f"vif {index}: bridge {vif.bridge} does not exist (or is not a bridge)")
        iface = ipaddress.IPv4Interface(vif.ip)
        prepared = PreparedVif(
            index,
            NetMode.TAP,
            mac=vif.mac or mac_for_ip(str(iface.ip)),
            ip=str(iface.ip),
            prefix=iface.network.prefixlen,
            gateway=vif.gateway or "0.0.0.0",
            mtu=vif.mtu or info.mtu,
            bridge=vif.bridge,
        )
    return prepared


def prepare_all(
    vifs: Sequence[ValidVif],
    vm_name: str,
    ctx: NetContext,
    undo: UndoStack,
    publish: Sequence[str | PortForward] = (),
) -> list[PreparedVif]:
    """Prepare every vif of a VM; ``publish`` (e.g. ``--publish``) goes to vif 0.

    :raise SpecError: ``publish`` given but the VM has no vif.
    """
    if publish and not vifs:
        raise SpecError("--publish needs a vif: add a [[vifs]] table (an empty one means user networking)")
    seen: set[tuple[str, str, int]] = set()
    for forward in [*(parse_publish(p) for p in publish), *(f for v in vifs for f in v.publish)]:
        key = (forward.proto, forward.host_addr, forward.host_port)
        if key in seen:
            raise SpecError(f"host port {forward.host_port}/{forward.proto} is published twice")
        seen.add(key)
    return [prepare(v, vm_name, i, ctx, undo, publish if i == 0 else ()) for i, v in enumerate(vifs)]


def summary(prepared: Sequence[PreparedVif]) -> str:
    """One line for the CLI after create: the mode each vif got, its address and forwards."""
    if not prepared:
        return "networking: none (no vifs)"
    modes = sorted({p.mode.value for p in prepared})
    why = ""
    if NetMode.USER.value in modes and not has_cap_net_admin():
        why = ", rootless: no CAP_NET_ADMIN"
    return f"networking: {'+'.join(modes)}{why}; " + "; ".join(p.describe() for p in prepared)


def qemu_args(prepared: PreparedVif, machine: str = "microvm", transport: str | None = None) -> list[str]:
    """The ``-netdev``/``-device`` pair for one vif.

    :param machine: the ``-M`` value (options after a comma are ignored);
        microvm gets ``virtio-net-device`` (virtio-mmio), pc/q35 ``virtio-net-pci``.
    :param transport: ``"mmio"`` or ``"pci"`` to override the machine's default.
    """
    nid = prepared.netdev_id
    if prepared.mode is NetMode.TAP:
        netdev = f"tap,id={nid},ifname={prepared.tap},script=no,downscript=no"
    else:
        netdev = ",".join([f"user,id={nid},net={USER_NET}", *(p.hostfwd() for p in prepared.publish)])
    kind = transport or ("mmio" if machine.split(",", 1)[0] == "microvm" else "pci")
    if kind == "mmio":
        device = f"virtio-net-device,netdev={nid},mac={prepared.mac}"
    elif kind == "pci":
        device = f"virtio-net-pci,netdev={nid},mac={prepared.mac},romfile="
    else:
        raise SpecError(f"vif transport {kind!r}: expected mmio or pci")
    return ["-netdev", netdev, "-device", device]


def noxs_config(prepared: PreparedVif, dev_mac: str = "") -> VifConfig:
    """The vif page content: MAC, IPv4/prefix, gateway, MTU and bridge (no DHCP in the guest);
    ``dev_mac``: the QEMU device's own MAC when it is not the vif's (a pooled shell's NIC)."""
    return VifConfig(
        mac=parse_mac(prepared.mac),
        ip=prepared.ip,
        prefix=prepared.prefix,
        gateway=prepared.gateway,
        mtu=prepared.mtu,
        bridge=prepared.bridge,
        dev_mac=parse_mac(dev_mac) if dev_mac else b"",
    )


def release(prepared: PreparedVif, vm_name: str, ctx: NetContext) -> None:
    """Delete the vif's tap and free its lease; everything already gone is fine.

    Call after QEMU has exited (QEMU holds the tap open; deleting a persistent
    tap under a running QEMU works but the guest loses its NIC).
    """
    if prepared.mode is NetMode.TAP and prepared.tap:
        ctx.devd().delete_tap(prepared.tap)
    if prepared.network is not None:
        ctx.store().release(vm_name, prepared.network, prepared.index)


def forget_vm(vm_name: str, ctx: NetContext) -> int:
    """Remove every tap and lease of ``vm_name``, found by alias and by lease (state lost).

    :return: how many taps and leases were removed.
    """
    removed = ctx.store().release(vm_name, thorough=True)
    if ctx.mode is NetMode.TAP:
        devd = ctx.devd()
        prefix = f"{ALIAS_PREFIX}vm={vm_name}/"
        for info in devd.links():
            if info.kind == "tun" and info.alias.startswith(prefix):
                devd.delete_tap(info.name)
                removed += 1
    return removed
