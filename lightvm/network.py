"""Networks: a bridge, a subnet, a host (gateway) address, optional NAT, and an IPAM.

A network is a first-class, named object persisted as one JSON file per network
under ``<state_dir>/networks/<name>.json`` (written to a temporary file and
renamed over the old one, so a reader never sees half a file; no fsync, like the
VM state beside it, which lives on tmpfs and dies with the VMs on a host crash). Every
read-modify-write (create, delete, lease, release) holds an exclusive
``fcntl.flock`` on ``<state_dir>/networks/.lock``, so two toolstacks creating VMs
at the same time never lease the same address.

Addressing. The gateway is the subnet's first host address and lives on the
bridge; VMs get the following addresses. The allocator walks a cursor round the
subnet, so a released address is handed out again only after every other free
one has been (fewer stale ARP entries), and never while it is leased. The MAC of
a leased address is ``52:54:<the four IPv4 bytes>``: locally administered,
unicast, and unique across all lightvm networks because their subnets may not
overlap. A fixed ``ip``/``mac`` in a spec is leased as a reservation and checked
against the others.

Creation refuses a subnet that overlaps another lightvm network, or any IPv4
address already configured on the host's (the namespace's) interfaces, and a
bridge name that exists and is not ours. Each step registers its undo: a
failure leaves nothing behind.

NAT (``--nat``) adds an nftables table ``ip lightvm_<name>`` with one
postrouting masquerade rule for traffic leaving the subnet, and sets
``net.ipv4.ip_forward=1``. pyroute2's nftables support cannot build a nat chain
with a masquerade expression practically, so this one step runs the ``nft``
binary (argv list, no shell, 5 s timeout, rules on stdin) inside devd's
namespace; without ``nft`` installed, ``--nat`` fails cleanly
(:class:`~lightvm.errors.CapabilityError`). ip_forward is left on when a network
is deleted (other things on the host may rely on it).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from lightvm.devd import UndoStack, bridge_alias, check_ifname
from lightvm.errors import (
    AddressExhaustedError,
    CapabilityError,
    ExistsError,
    NetworkError,
    NotFoundError,
    SpecError,
    SubnetConflictError,
)

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
DEFAULT_MTU = 1500
BRIDGE_PREFIX = "lv-"
NFT_TIMEOUT = 5.0


class NetOps(Protocol):
    """What a network needs from devd (a fake in unit tests, :class:`~lightvm.devd.Devd` for real)."""

    def ensure_bridge(self, name: str, mtu: int = ..., alias: str = ..., undo: UndoStack | None = ...) -> int: ...
    def delete_bridge(self, name: str, force: bool = ...) -> bool: ...
    def ensure_address(self, ifname: str, iface: ipaddress.IPv4Interface, undo: UndoStack | None = ...) -> None: ...
    def addresses(self) -> list[tuple[str, ipaddress.IPv4Interface]]: ...
    def ports(self, bridge: str) -> list[str]: ...
    def ifindex(self, name: str) -> int | None: ...
    def write_sysctl(self, key: str, value: str) -> None: ...
    def run(self, argv: list[str], stdin: str = ..., timeout: float = ...) -> str: ...


class Lease(NamedTuple):
    """One address leased to one vif of one VM (a NamedTuple: cheap to load by the hundred)."""

    vm: str
    vif: int
    ip: str
    mac: str
    fixed: bool = False  # the spec asked for this ip/mac


@dataclass(frozen=True)
class VifAddress:
    """Everything a vif on a network needs: what goes in its NoXS vif page, and its bridge."""

    ip: str
    prefix: int
    gateway: str
    mac: str
    mtu: int
    bridge: str
    network: str


@dataclass
class Network:
    """A network's persisted state."""

    name: str
    subnet: str
    bridge: str
    gateway: str
    mtu: int = DEFAULT_MTU
    nat: bool = False
    created: float = 0.0
    cursor: int = 0  # offset of the next address the allocator tries
    leases: list[Lease] = field(default_factory=list)

    @property
    def net(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def prefix(self) -> int:
        return self.net.prefixlen

    @property
    def gateway_iface(self) -> ipaddress.IPv4Interface:
        return ipaddress.IPv4Interface(f"{self.gateway}/{self.prefix}")

    @property
    def capacity(self) -> int:
        """How many VM addresses the subnet holds (all hosts but the gateway)."""
        return self.net.num_addresses - 3

    def to_json(self) -> dict[str, Any]:
        # By hand, not dataclasses.asdict: this runs on every lease, and asdict's
        # deep copy of a few hundred leases cost more than the tap setup itself.
        data = {k: getattr(self, k) for k in ("name", "subnet", "bridge", "gateway", "mtu", "nat", "created", "cursor")}
        data["leases"] = [{"vm": x.vm, "vif": x.vif, "ip": x.ip, "mac": x.mac, "fixed": x.fixed} for x in self.leases]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Network:
        leases = [Lease(**lease) for lease in data.pop("leases", [])]
        return cls(**data, leases=leases)


def mac_for_ip(ip: str) -> str:
    """The MAC lightvm gives the vif holding ``ip``: ``52:54:`` + the address bytes."""
    return "52:54:" + ":".join(f"{b:02x}" for b in ipaddress.IPv4Address(ip).packed)


def check_mac(text: str) -> str:
    """Normalise a MAC and require a usable unicast address.

    :raise SpecError: malformed, multicast/broadcast, or all zeros.
    """
    parts = text.strip().lower().split(":")
    if len(parts) != 6 or any(len(p) != 2 or any(c not in "0123456789abcdef" for c in p) for p in parts):
        raise SpecError(f"bad MAC address {text!r}; expected six hex pairs like 52:54:00:12:34:56")
    first = int(parts[0], 16)
    if first & 1:
        raise SpecError(f"MAC {text} is a multicast/broadcast address; a vif needs a unicast MAC (even first octet)")
    if all(p == "00" for p in parts):
        raise SpecError("MAC 00:00:00:00:00:00 is not a usable address")
    return ":".join(parts)


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """Parse ``a.b.c.d/prefix`` as a network lightvm can use (/8../29, no host bits).

    :raise NetworkError: with what to type instead.
    """
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError as exc:
        raise NetworkError(f"bad subnet {text!r}: {exc}; expected e.g. 10.128.0.0/16") from exc
    if "/" not in text:
        raise NetworkError(f"subnet {text!r} needs a prefix length, e.g. {text}/24")
    if str(net) != text.strip():
        raise NetworkError(f"subnet {text!r} has host bits set; did you mean {net}?")
    if not 8 <= net.prefixlen <= 29:
        raise NetworkError(f"subnet {text} must be between /8 and /29 (a gateway and at least 4 VMs)")
    if net.is_loopback or net.is_multicast or net.is_link_local or net.is_reserved or net.is_unspecified:
        raise NetworkError(f"subnet {text} is a loopback/multicast/link-local/reserved range")
    return net


class NetworkStore:
    """The networks under one state dir, and their address allocators.

    :param state_dir: lightvm's state directory; networks live in ``networks/`` under it.
    :param ops: bridge/address operations (a :class:`~lightvm.devd.Devd` or a fake).
        Without it, a host-namespace ``Devd()`` is opened the first time a command
        needs one (create, delete, ensure_up); lease/release/networks never do.
    :param host_addresses: overrides ``ops.addresses()`` for the host-overlap
        check (unit tests inject a list).
    """

    def __init__(
        self,
        state_dir: Path | str,
        ops: NetOps | None = None,
        host_addresses: Callable[[], list[tuple[str, ipaddress.IPv4Interface]]] | None = None,
    ) -> None:
        self.dir = Path(state_dir) / "networks"
        self._ops = ops
        self._own_ops: Any = None
        self._host_addresses = host_addresses

    # -- plumbing --

    def ops(self) -> NetOps:
        if self._ops is None:
            from lightvm.devd import Devd

            self._own_ops = self._ops = Devd()
        return self._ops

    def close(self) -> None:
        """Close the Devd this store opened itself (not one passed in)."""
        if self._own_ops is not None:
            self._own_ops.close()
            self._own_ops = self._ops = None

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the networks lock (exclusive) for a read-modify-write."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def _save(self, net: Network) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{net.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(net.to_json(), separators=(",", ":")))  # compact: the C encoder
            os.replace(tmp, self._path(net.name))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _load(self, path: Path) -> Network:
        try:
            return Network.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise NetworkError(f"network state {path} is unreadable ({exc}); fix or remove it") from exc

    # -- queries --

    def get(self, name: str) -> Network:
        """:raise NotFoundError: no network by that name."""
        path = self._path(name)
        if not NAME_RE.match(name) or not path.exists():
            raise NotFoundError(f"no network {name!r}; `lightvm network list` shows them")
        return self._load(path)

    def networks(self) -> list[Network]:
        if not self.dir.is_dir():
            return []
        return [self._load(p) for p in sorted(self.dir.glob("*.json"))]

    def by_bridge(self, bridge: str) -> Network | None:
        """The lightvm network whose bridge is ``bridge``, if any."""
        return next((n for n in self.networks() if n.bridge == bridge), None)

    # -- create / delete --

    def create(
        self, name: str, subnet: str, nat: bool = False, mtu: int = DEFAULT_MTU, bridge: str | None = None
    ) -> Network:
        """Validate, create the bridge with the gateway address (+ NAT), persist.

        Nothing is left behind on any failure.

        :raise ExistsError: a network by that name exists.
        :raise SubnetConflictError: the subnet overlaps another network or a host address.
        :raise ForeignLinkError: the bridge name is taken by an interface that is not ours.
        :raise CapabilityError: --nat without the nft tool, or no CAP_NET_ADMIN.
        :raise NetworkError: bad name, subnet or MTU; the kernel refused a step.
        """
        if not NAME_RE.match(name):
            raise NetworkError(f"bad network name {name!r}: lowercase letters, digits, '-' and '_', up to 32")
        net = parse_subnet(subnet)
        if not 68 <= mtu <= 9000:
            raise NetworkError(f"MTU {mtu} out of range 68..9000")
        bridge = bridge or BRIDGE_PREFIX + name
        if len(bridge) > 15:
            raise NetworkError(f"bridge name {bridge!r} is longer than 15 characters; pass --bridge NAME")
        check_ifname(bridge)
        gateway = ipaddress.IPv4Interface(f"{net.network_address + 1}/{net.prefixlen}")
        with self.locked():
            if self._path(name).exists():
                raise ExistsError(f"network {name!r} exists; `lightvm network delete {name}` first")
            for other in self.networks():
                if other.net.overlaps(net):
                    raise SubnetConflictError(f"subnet {net} overlaps network {other.name!r} ({other.subnet})")
                if other.bridge == bridge:
                    raise ExistsError(f"bridge {bridge} already belongs to network {other.name!r}")
            ops = self.ops()
            host = self._host_addresses() if self._host_addresses is not None else ops.addresses()
            for ifname, iface in host:
                if ifname == bridge and iface == gateway:
                    continue  # our own leftover from an interrupted create: adopted below
                if iface.network.overlaps(net):
                    raise SubnetConflictError(
                        f"subnet {net} overlaps {iface} on host interface {ifname}; pick another subnet"
                    )
            record = Network(
                name=name,
                subnet=str(net),
                bridge=bridge,
                gateway=str(gateway.ip),
                mtu=mtu,
                nat=nat,
                created=time.time(),
            )
            with UndoStack() as undo:
                ops.ensure_bridge(bridge, mtu, bridge_alias(name), undo=undo)
                ops.ensure_address(bridge, gateway, undo=undo)
                if nat:
                    self._nat_up(ops, record, undo)
                self._save(record)
                undo.commit()
            return record

    def delete(self, name: str, force: bool = False) -> Network:
        """Delete the bridge (and NAT) and the state file of network ``name``.

        :param force: drop existing leases too (their VMs lose connectivity).
        :raise NotFoundError: no such network.
        :raise NetworkError: leases exist and not ``force``.
        """
        with self.locked():
            record = self.get(name)
            if record.leases and not force:
                vms = sorted({lease.vm for lease in record.leases})
                raise NetworkError(
                    f"network {name!r} has {len(record.leases)} leases (VMs {', '.join(vms[:5])}"
                    f"{', ...' if len(vms) > 5 else ''}); destroy them or use --force"
                )
            ops = self.ops()
            if record.nat:
                self._nat_down(ops, record)
            ops.delete_bridge(record.bridge, force=force)
            self._path(name).unlink(missing_ok=True)
            return record

    def ensure_up(self, name: str) -> Network:
        """Re-create a network's bridge, address and NAT if they are gone (e.g. after a reboot).

        :raise NotFoundError: no such network.
        """
        record = self.get(name)
        ops = self.ops()
        if ops.ifindex(record.bridge) is not None:
            return record
        with self.locked(), UndoStack() as undo:
            ops.ensure_bridge(record.bridge, record.mtu, bridge_alias(name), undo=undo)
            ops.ensure_address(record.bridge, record.gateway_iface, undo=undo)
            if record.nat:
                self._nat_down(ops, record)
                self._nat_up(ops, record, undo)
            undo.commit()
        return record

    def _nat_up(self, ops: NetOps, record: Network, undo: UndoStack) -> None:
        table = _nat_table(record.name)
        rules = (
            f"table ip {table} {{\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f"    ip saddr {record.subnet} ip daddr != {record.subnet} masquerade\n"
            "  }\n"
            "}\n"
        )
        ops.run(["nft", "-f", "-"], stdin=rules, timeout=NFT_TIMEOUT)
        undo.push(f"nft table {table}", lambda: self._nat_down(ops, record))
        ops.write_sysctl("ipv4/ip_forward", "1")

    def _nat_down(self, ops: NetOps, record: Network) -> None:
        table = _nat_table(record.name)
        try:
            ops.run(["nft", "delete", "table", "ip", table], timeout=NFT_TIMEOUT)
        except CapabilityError:
            return  # no nft on this host (any more): there is no table to delete either
        except NetworkError as exc:
            if "No such file or directory" not in str(exc):
                raise

    # -- the allocator --

    def lease(self, name: str, vm: str, vif: int, ip: str | None = None, mac: str | None = None) -> VifAddress:
        """Lease an address (and MAC) on network ``name`` to vif ``vif`` of ``vm``.

        Asking again for the same (vm, vif) returns the lease it already has.

        :param ip: a fixed address inside the subnet (else the next free one).
        :param mac: a fixed unicast MAC (else derived from the address).
        :raise NotFoundError: no such network.
        :raise AddressExhaustedError: no free address left.
        :raise SpecError: ``ip``/``mac`` malformed, outside the subnet, or taken.
        """
        with self.locked():
            record = self.get(name)
            for lease in record.leases:
                if lease.vm == vm and lease.vif == vif:
                    return _address(record, lease)
            taken_ips = {lease.ip for lease in record.leases}
            taken_macs = {lease.mac for lease in record.leases}
            net = record.net
            if ip is not None:
                chosen = self._check_fixed_ip(record, ip, taken_ips)
            else:
                chosen = self._next_free(record, taken_ips)
            want_mac = check_mac(mac) if mac is not None else mac_for_ip(chosen)
            if want_mac in taken_macs:
                owner = next(lease for lease in record.leases if lease.mac == want_mac)
                raise SpecError(f"MAC {want_mac} is already used by {owner.vm} vif {owner.vif} on network {name}")
            new = Lease(vm=vm, vif=vif, ip=chosen, mac=want_mac, fixed=ip is not None or mac is not None)
            record.leases.append(new)
            if ip is None:
                record.cursor = (int(ipaddress.IPv4Address(chosen)) - int(net.network_address) - 1) % record.capacity
            self._save(record)
            return _address(record, new)

    def _check_fixed_ip(self, record: Network, ip: str, taken: set[str]) -> str:
        try:
            addr = ipaddress.IPv4Address(ip.split("/", 1)[0])
        except ValueError as exc:
            raise SpecError(f"bad IPv4 address {ip!r}") from exc
        net = record.net
        if addr not in net or addr in (net.network_address, net.broadcast_address) or str(addr) == record.gateway:
            raise SpecError(
                f"{addr} is not a usable VM address on network {record.name} ({net}, gateway {record.gateway})"
            )
        if str(addr) in taken:
            owner = next(lease for lease in record.leases if lease.ip == str(addr))
            raise SpecError(f"{addr} is already leased to {owner.vm} vif {owner.vif} on network {record.name}")
        return str(addr)

    def _next_free(self, record: Network, taken: set[str]) -> str:
        base = int(record.net.network_address) + 2  # .0 is the network, .1 the gateway
        capacity = record.capacity
        if len(taken) >= capacity:
            raise AddressExhaustedError(
                f"network {record.name} ({record.subnet}) is full: all {capacity} VM addresses are leased; "
                "destroy VMs or create a larger network"
            )
        for step in range(capacity):
            candidate = str(ipaddress.IPv4Address(base + (record.cursor + step) % capacity))
            if candidate not in taken:
                return candidate
        raise AddressExhaustedError(f"network {record.name} ({record.subnet}) has no free address")

    def release(self, vm: str, name: str | None = None, vif: int | None = None) -> int:
        """Free the leases of ``vm`` (on network ``name`` / vif ``vif`` if given); missing is fine.

        :return: how many leases were freed.
        """
        freed = 0
        with self.locked():
            for record in [self.get(name)] if name is not None and self._path(name).exists() else self.networks():
                keep = [lease for lease in record.leases if not (lease.vm == vm and (vif is None or lease.vif == vif))]
                if len(keep) != len(record.leases):
                    freed += len(record.leases) - len(keep)
                    record.leases = keep
                    self._save(record)
        return freed


def _nat_table(name: str) -> str:
    return "lightvm_" + name.replace("-", "_")


def _address(record: Network, lease: Lease) -> VifAddress:
    return VifAddress(
        ip=lease.ip,
        prefix=record.prefix,
        gateway=record.gateway,
        mac=lease.mac,
        mtu=record.mtu,
        bridge=record.bridge,
        network=record.name,
    )
