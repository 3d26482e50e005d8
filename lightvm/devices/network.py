"""Networks: a bridge, a subnet, a host (gateway) address, optional NAT, and an IPAM.

A network is a first-class, named object persisted under ``<state_dir>/networks``
as ``NAME.json`` (subnet, bridge, gateway, mtu, nat; written once). Its address
allocator, with the lease files beside it, is :mod:`lightvm.devices.ipam`;
:class:`NetworkStore` is that allocator plus the records and the bridges.

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

import ipaddress
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from lightvm.devices.devd import bridge_alias, check_ifname
from lightvm.devices.ipam import Lease, LeaseStore, mac_for_ip
from lightvm.errors import CapabilityError, ExistsError, NetworkError, NotFoundError, SubnetConflictError
from lightvm.undo import UndoStack

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
DEFAULT_MTU = 1500
BRIDGE_PREFIX = "lv-"
NFT_TIMEOUT = 5.0


class NetOps(Protocol):
    """What a network needs from devd (a fake in unit tests, :class:`~lightvm.devices.devd.Devd` for real)."""

    def ensure_bridge(
        self, name: str, mtu: int = ..., alias: str = ..., undo: UndoStack | None = ..., mac: str | None = ...
    ) -> int: ...
    def delete_bridge(self, name: str, force: bool = ...) -> bool: ...
    def ensure_address(self, ifname: str, iface: ipaddress.IPv4Interface, undo: UndoStack | None = ...) -> None: ...
    def addresses(self) -> list[tuple[str, ipaddress.IPv4Interface]]: ...
    def ports(self, bridge: str) -> list[str]: ...
    def ifindex(self, name: str) -> int | None: ...
    def write_sysctl(self, key: str, value: str) -> None: ...
    def run(self, argv: list[str], stdin: str = ..., timeout: float = ...) -> str: ...


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
    leases: list[Lease] = field(default_factory=list)  # filled by NetworkStore.get()

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
    def gateway_mac(self) -> str:
        """The bridge's MAC, fixed: the one a vif holding the gateway's address would get
        (``52:54:`` + its bytes), which no VM holds. It stays when ports come and go and
        when the bridge is made again (:meth:`NetworkStore.ensure_up`), so a guest's resolved
        gateway, restored VMs' included, stays right."""
        return mac_for_ip(self.gateway)

    @property
    def capacity(self) -> int:
        """How many VM addresses the subnet holds (all hosts but the gateway)."""
        return self.net.num_addresses - 3

    def to_json(self) -> dict[str, Any]:
        """The network's own file (leases live in their own files)."""
        return {k: getattr(self, k) for k in ("name", "subnet", "bridge", "gateway", "mtu", "nat", "created")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Network:
        return cls(**data)


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


class NetworkStore(LeaseStore):
    """The networks under one state dir, and their address allocators.

    :param state_dir: lightvm's state directory; networks live in ``networks/`` under it.
    :param ops: bridge/address operations (a :class:`~lightvm.devices.devd.Devd` or a fake).
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
            from lightvm.devices.devd import Devd

            self._own_ops = self._ops = Devd()
        return self._ops

    def close(self) -> None:
        """Close the Devd this store opened itself (not one passed in)."""
        if self._own_ops is not None:
            self._own_ops.close()
            self._own_ops = self._ops = None

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.json"

    def _write(self, path: Path, text: str) -> None:
        """Write ``path`` atomically (temporary file + rename)."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "w") as fh:
                fh.write(text)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _save(self, net: Network) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o755)
        self._write(self._path(net.name), json.dumps(net.to_json(), indent=1, sort_keys=True) + "\n")

    def _load(self, path: Path) -> Network:
        try:
            return Network.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise NetworkError(f"network state {path} is unreadable ({exc}); fix or remove it") from exc

    def _config(self, name: str) -> Network:
        """The network without its leases (O(1)).

        :raise NotFoundError: no network by that name.
        """
        path = self._path(name)
        if not NAME_RE.match(name) or not path.exists():
            raise NotFoundError(f"no network {name!r}; `lightvm network list` shows them")
        return self._load(path)

    # -- queries --

    def get(self, name: str) -> Network:
        """The network with all its leases (reads every lease file: for listing, not the create path).

        :raise NotFoundError: no network by that name.
        """
        record = self._config(name)
        record.leases = self.leases(name)
        return record

    def networks(self, with_leases: bool = True) -> list[Network]:
        return [self.get(n) if with_leases else self._config(n) for n in self._network_names()]

    def _network_names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.stem for p in self.dir.glob("*.json"))

    def _exists(self, name: str) -> bool:
        return self._path(name).exists()

    def by_bridge(self, bridge: str) -> Network | None:
        """The lightvm network whose bridge is ``bridge``, if any."""
        return next((n for n in self.networks(with_leases=False) if n.bridge == bridge), None)

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
            for other in self.networks(with_leases=False):
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
                ops.ensure_bridge(bridge, mtu, bridge_alias(name), undo=undo, mac=record.gateway_mac)
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
                    f"{', ...' if len(vms) > 5 else ''}); destroy them or use --force (a running lightvmd's "
                    "prepared shells hold leases under their ids: they go when lightvmd stops)"
                )
            ops = self.ops()
            if record.nat:
                self._nat_down(ops, record)
            ops.delete_bridge(record.bridge, force=force)
            self._path(name).unlink(missing_ok=True)
            shutil.rmtree(self._leases(name), ignore_errors=True)
            return record

    def ensure_up(self, name: str) -> Network:
        """Re-create a network's bridge, address and NAT if they are gone (e.g. after a reboot).

        :raise NotFoundError: no such network.
        """
        record = self._config(name)
        ops = self.ops()
        if ops.ifindex(record.bridge) is not None:
            return record
        with self.locked(), UndoStack() as undo:
            ops.ensure_bridge(record.bridge, record.mtu, bridge_alias(name), undo=undo, mac=record.gateway_mac)
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


def _nat_table(name: str) -> str:
    return "lightvm_" + name.replace("-", "_")
