"""``lightvm migrate VM [user@]HOST`` and the hidden ``migrate-receive`` (run over SSH on the
destination). Registered by :mod:`lightvm.checkpoint_cli`; the logic is in :mod:`lightvm.migrate`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Here, not in lightvm.migrate: parsing any lightvm command must not import the migration code.
DEFAULT_BANDWIDTH_MIB = 4096  # QEMU's default (128 MiB/s) never converges for a guest writing memory
DEFAULT_DOWNTIME_MS = 10


def register(subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "migrate",
        parents=[parent],
        help="live-migrate a VM to another host over SSH",
        description="Move a running VM to [user@]HOST without stopping its guest for more than the "
        "final copy: SSH to HOST (host key checked against known_hosts; an unknown or changed "
        "key is refused), run `lightvm migrate-receive` there (it recreates the VM's "
        "networking and waits with an -incoming QEMU), stream the VM (direct TCP, or inside "
        "the SSH connection with --tunnel), wait until the guest runs there, then destroy it "
        "here. On any failure the VM keeps running here and nothing is left there.",
    )
    p.add_argument("name", metavar="VM")
    p.add_argument("target", metavar="[USER@]HOST")
    p.add_argument("--port", type=int, default=22, help="SSH port (default 22)")
    p.add_argument("--known-hosts", type=Path, help="known_hosts file (default: ~/.ssh/known_hosts)")
    p.add_argument("--identity", type=Path, help="private key file (default: agent and ~/.ssh keys)")
    p.add_argument("--tunnel", action="store_true", help="send the stream through the SSH connection")
    p.add_argument(
        "--remote-command",
        default="lightvm",
        metavar="CMD",
        help="how to run lightvm on HOST (default: lightvm), e.g. '/opt/lv/bin/python -m lightvm.cli'",
    )
    p.add_argument("--remote-state-dir", metavar="DIR", help="--state-dir of lightvm on HOST")
    p.add_argument(
        "--bandwidth-mib",
        type=float,
        default=DEFAULT_BANDWIDTH_MIB,
        metavar="MIB",
        help=f"max migration bandwidth in MiB/s (default {DEFAULT_BANDWIDTH_MIB}; QEMU's 128 never "
        "converges for a guest that writes memory)",
    )
    p.add_argument(
        "--downtime-ms",
        type=int,
        default=DEFAULT_DOWNTIME_MS,
        metavar="MS",
        help=f"allowed downtime for the final copy (default {DEFAULT_DOWNTIME_MS})",
    )
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="deadline of each phase")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_migrate)

    # No help=: argparse leaves it out of the command list (it is run by `migrate` over SSH).
    p = subparsers.add_parser("migrate-receive", parents=[parent])
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_receive)


def cmd_migrate(args: argparse.Namespace) -> int:
    from lightvm import migrate
    from lightvm.checkpoint_cli import _toolstack

    result = migrate.migrate(
        _toolstack(args),
        args.name,
        args.target,
        port=args.port,
        known_hosts=args.known_hosts,
        identity=args.identity,
        remote_command=args.remote_command,
        remote_state_dir=args.remote_state_dir,
        tunnel=args.tunnel,
        bandwidth_mib=args.bandwidth_mib,
        downtime_ms=args.downtime_ms,
        timeout=args.timeout,
    )
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    how = "through the SSH tunnel" if result.tunnel else "direct TCP"
    print(
        f"{result.name}: migrated to {result.destination} ({how}) in {result.total_ms:.1f} ms: "
        f"migration {result.migrate_ms:.1f} ms, downtime {result.downtime_ms:.1f} ms, "
        f"{result.bytes} bytes sent; ssh {result.ssh_ms:.1f} ms, destination ready {result.prepare_ms:.1f} ms, "
        f"guest running there {result.handover_ms:.1f} ms after the stream"
    )
    return 0


def cmd_receive(args: argparse.Namespace) -> int:
    from lightvm import migrate
    from lightvm.checkpoint_cli import _toolstack

    sys.stdout.flush()
    return migrate.receive(_toolstack(args), timeout=args.timeout)
