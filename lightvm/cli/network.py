"""``lightvm network create|list|delete``: the network subcommands.

:mod:`lightvm.cli.main` calls :func:`register` with its subparsers, only when the command
line names ``network`` (or asks for help): pyroute2 is slow to import. Every command sets
``func(args) -> int`` and reads ``args.state_dir`` (if absent, :func:`lightvm.state.default_state_dir`,
as for VMs). Errors are raised as :class:`~lightvm.errors.LightVMError` for main to print.
``LIGHTVM_NETNS=name`` runs the bridge work inside that network namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lightvm.devices.devd import Devd
from lightvm.devices.network import DEFAULT_MTU, Network, NetworkStore
from lightvm.state import default_state_dir


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``network create/list/delete`` to the ``lightvm`` argument parser (the global options,
    --state-dir and --json among them, are added to each by lightvm/cli/parser.py)."""
    net = subparsers.add_parser("network", help="create, list and delete networks (bridge + subnet + IPAM)")
    sub = net.add_subparsers(dest="network_command", metavar="{create,list,delete}", required=True)

    create = sub.add_parser("create", help="create a network: a bridge holding the subnet's gateway address")
    create.add_argument("name", help="network name (lowercase letters, digits, - and _)")
    create.add_argument("--subnet", required=True, help="IPv4 subnet, e.g. 10.128.0.0/16; the gateway is .1")
    create.add_argument("--nat", action="store_true", help="masquerade traffic leaving the subnet (needs nft)")
    create.add_argument("--mtu", type=int, default=DEFAULT_MTU, help=f"bridge and vif MTU (default {DEFAULT_MTU})")
    create.add_argument("--bridge", help="bridge name (default lv-NAME, at most 15 characters)")
    create.set_defaults(func=cmd_create)

    listing = sub.add_parser("list", help="list networks and their leases")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(func=cmd_list)

    delete = sub.add_parser("delete", help="delete a network's bridge, NAT rule and state")
    delete.add_argument("name")
    delete.add_argument("--force", action="store_true", help="delete even if VMs still hold leases")
    delete.set_defaults(func=cmd_delete)


def _state_dir(args: argparse.Namespace) -> Path:
    value = getattr(args, "state_dir", None)
    return Path(value) if value else default_state_dir()


def _devd() -> Devd:
    return Devd(os.environ.get("LIGHTVM_NETNS") or None)


def cmd_create(args: argparse.Namespace) -> int:
    with _devd() as devd:
        store = NetworkStore(_state_dir(args), ops=devd)
        record = store.create(args.name, args.subnet, nat=args.nat, mtu=args.mtu, bridge=args.bridge)
    if getattr(args, "json", False):
        print(json.dumps(_summary(record)))
        return 0
    nat = ", NAT on" if record.nat else ""
    print(
        f"network {record.name}: {record.subnet} on bridge {record.bridge}, gateway {record.gateway}, "
        f"{record.capacity} addresses, mtu {record.mtu}{nat}"
    )
    return 0


def _summary(record: Network) -> dict[str, object]:
    return {
        "name": record.name,
        "subnet": record.subnet,
        "bridge": record.bridge,
        "gateway": record.gateway,
        "mtu": record.mtu,
        "nat": record.nat,
        "capacity": record.capacity,
        "leases": [
            {"vm": lease.vm, "vif": lease.vif, "ip": lease.ip, "mac": lease.mac, "fixed": lease.fixed}
            for lease in record.leases
        ],
    }


def cmd_list(args: argparse.Namespace) -> int:
    store = NetworkStore(_state_dir(args))
    records = store.networks(with_leases=args.json)
    if args.json:
        json.dump([_summary(r) for r in records], sys.stdout, indent=1)
        print()
        return 0
    if not records:
        print("no networks; create one with `lightvm network create NAME --subnet 10.128.0.0/16`")
        return 0
    print(f"{'NAME':<16} {'SUBNET':<18} {'BRIDGE':<15} {'GATEWAY':<15} {'MTU':>5} {'NAT':<3} {'LEASES':>7}")
    for r in records:
        nat = "yes" if r.nat else "no"
        used = f"{store.lease_count(r.name)}/{r.capacity}"
        print(f"{r.name:<16} {r.subnet:<18} {r.bridge:<15} {r.gateway:<15} {r.mtu:>5} {nat:<3} {used:>7}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    with _devd() as devd:
        record = NetworkStore(_state_dir(args), ops=devd).delete(args.name, force=args.force)
    if getattr(args, "json", False):
        print(json.dumps({**_summary(record), "action": "deleted"}))
        return 0
    dropped = f" (dropped {len(record.leases)} leases)" if record.leases else ""
    print(f"network {record.name} deleted: bridge {record.bridge} removed{dropped}")
    return 0
