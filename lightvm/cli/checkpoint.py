"""``lightvm save|restore|migrate`` and the hidden ``migrate-receive`` / ``migrate-relay``.

The VM's mobility, one group: the logic is in :mod:`lightvm.mobility` (checkpoint, migrate);
``restore`` and ``migrate`` go through lightvmd when one runs (:mod:`lightvm.cli.backend`),
and each prints once from the same data. ``migrate-receive`` runs over SSH on the
destination; ``migrate-relay`` pipes an SSH channel into the lightvmd there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lightvm.cli.backend import open_backend, state_root, toolstack
from lightvm.mobility import DEFAULT_BANDWIDTH_MIB, DEFAULT_DOWNTIME_MS

SAVE = (
    "Stop the VM, write its checkpoint (lightvm header + QEMU's migration stream; format in "
    "lightvm/mobility/format.py) to FILE, then destroy the VM unless --keep-running. On any failure "
    "(disk full, QEMU error) no file is left and the VM keeps running."
)
RESTORE = (
    "Start a VM from FILE (made by `lightvm save`): the guest continues where it was saved (no reboot). Its "
    "NoXS page identity (name, uuid, clock) is rewritten. The file is kept. Through lightvmd (when one runs "
    "on the state dir) a prepared -incoming QEMU of the VM's kind takes the QEMU start off the restore "
    "(path: pool)."
)

MIGRATE = (
    "Move a running VM to [user@]HOST without stopping its guest for more than the "
    "final copy: SSH to HOST (host key checked against known_hosts; an unknown or changed "
    "key is refused), run `lightvm migrate-receive` there (it recreates the VM's "
    "networking and waits with an -incoming QEMU), stream the VM inside the SSH connection "
    "(encrypted; --direct: plain TCP to HOST, faster, for a trusted network), wait until the "
    "guest runs there, then destroy it "
    "here. On any failure the VM keeps running here and nothing is left there. "
    "When a lightvmd runs on this host's state dir the migration goes through it: it "
    "keeps the SSH connection open between migrations, and when a lightvmd runs on HOST "
    "too, a prepared -incoming QEMU there receives the VM (no handshake, no process or "
    "QEMU start: the fast path; see docs/checkpoint.md). LIGHTVM_NO_DAEMON=1: one-shot."
)

QUIET = "no progress lines on stderr (shown when the stream lasts over 0.5 s: a large VM)"
PROGRESS_AFTER_ENV = "LIGHTVM_PROGRESS_AFTER"
PROGRESS_AFTER = 0.5  # seconds: a shorter save or restore prints no progress


class ProgressLines:
    """Progress of a save or restore on stderr: how much of the whole is done, the rate,
    what is left and about how long. Silent for the first ``after`` seconds (a small VM's
    save takes a few ms: a line then is noise), then a line per report (every 0.25 s, and
    the end). ``$LIGHTVM_PROGRESS_AFTER`` sets ``after`` (0: always).

    Done is ``total - remaining``, not ``transferred``: for a save, QEMU's total and
    remaining count guest RAM while transferred counts bytes written, and zero pages are
    written as a few bytes (a 2 GiB noop guest saves into 4.6 MiB), so a rate of written
    bytes would promise hours. The rate is the average since the command started.
    """

    def __init__(self, verb: str, after: float | None = None) -> None:
        import os

        self.verb = verb
        if after is None:
            try:
                after = float(os.environ.get(PROGRESS_AFTER_ENV, PROGRESS_AFTER))
            except ValueError:
                after = PROGRESS_AFTER
        self.after = after
        self.t0 = time.monotonic()
        self.shown = 0

    def __call__(self, p: dict[str, Any]) -> None:
        elapsed = time.monotonic() - self.t0
        if elapsed < self.after:
            return
        print(self.line(p, elapsed), file=sys.stderr, flush=True)
        self.shown += 1

    def line(self, p: dict[str, Any], elapsed: float) -> str:
        mib = 1 << 20
        total, remaining, written = p["total"], p["remaining"], p["transferred"]
        done = total - remaining if p["status"] != "completed" else total
        rate = done / elapsed if elapsed > 0 else 0.0
        line = f"{self.verb}: {p['status']}: {done / mib:.1f} of {total / mib:.1f} MiB"
        if p["status"] == "completed":
            line += f" in {elapsed:.1f} s, {rate / mib:.1f} MiB/s"
        elif remaining == 0:  # a restore's stream is read; QEMU still loads what it holds
            line += f" read, {rate / mib:.1f} MiB/s; QEMU is still loading it ({elapsed:.1f} s)"
        else:
            eta = f", ~{remaining / rate:.1f} s" if rate > 0 else ""
            line += f", {rate / mib:.1f} MiB/s, {remaining / mib:.1f} MiB left{eta}"
        if self.verb == "save":
            line += f"; {written / mib:.1f} MiB written"
        return line


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    """Add ``save``, ``restore``, ``migrate``, ``migrate-receive`` and ``migrate-relay`` to the parser."""
    p = subparsers.add_parser(
        "save", parents=[parent], help="save a VM to a file (then destroy it, unless --keep-running)", description=SAVE
    )
    p.add_argument("name", metavar="VM")
    p.add_argument("file", type=Path, metavar="FILE", help="checkpoint file to create (must not exist)")
    p.add_argument("--keep-running", action="store_true", help="resume the VM after saving")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds allowed for the stream")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET)
    p.set_defaults(func=cmd_save)

    p = subparsers.add_parser(
        "restore", parents=[parent], help="restore a VM from a checkpoint file", description=RESTORE
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--name", help="name of the restored VM (default: the saved VM's name)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the guest")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help=QUIET)
    p.set_defaults(func=cmd_restore)

    _register_migrate(subparsers, parent)


def cmd_save(args: argparse.Namespace) -> int:
    """Not routed: lightvmd has no save operation (it would write files as its own user
    for anyone who can reach its socket); a lightvmd on the state dir is told afterwards."""
    from lightvm.daemon.events import notify_saved
    from lightvm.mobility.save import save

    ts = toolstack(args)
    progress = None if args.quiet else ProgressLines("save")
    result = save(
        ts,
        args.name,
        args.file,
        keep_running=args.keep_running,
        timeout=args.timeout,
        progress=progress,
        on_saved=lambda path: notify_saved(ts.state.root, args.name, str(path)),
    )
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    after = "kept running" if result.kept_running else "destroyed"
    print(
        f"{result.name}: saved to {result.path} ({result.bytes} bytes) in {result.save_ms:.1f} ms "
        f"(stopped {result.downtime_ms:.1f} ms); VM {after}; {result.total_ms:.1f} ms in all"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        t0 = time.perf_counter()
        result = backend.restore(args.file, args.name, args.timeout, None if args.quiet else ProgressLines("restore"))
        wall = (time.perf_counter() - t0) * 1000
    if args.json:
        print(json.dumps(result))
        return 0
    state = "paused (it was saved paused)" if result["paused"] else "running"
    print(
        f"{result['name']}: restored from {args.file} in {result['restore_ms']:.1f} ms "
        f"(stream + resume {result['finish_ms']:.1f} ms), {state}, pid {result['pid']}; "
        f"guest heartbeat {result['heartbeat']}, app counter {result['app_counter']}"
    )
    if backend.routed:
        print(f"  path: {result['path']} (lightvmd; request -> reply {wall:.1f} ms at the client)")
    return 0


def _register_migrate(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    text = "live-migrate a VM to another host over SSH"
    p = subparsers.add_parser("migrate", parents=[parent], help=text, description=MIGRATE)
    p.add_argument("name", metavar="VM")
    add_ssh_args(p)
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--direct",
        action="store_true",
        help="send the stream over plain TCP to HOST (unencrypted: only on a network you trust)",
    )
    how.add_argument("--tunnel", action="store_true", help="through the SSH connection, encrypted (the default)")
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
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_migrate)

    # No help=: argparse leaves them out of the command list (run by `migrate` over SSH).
    p = subparsers.add_parser("migrate-receive", parents=[parent])
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_receive)
    p = subparsers.add_parser("migrate-relay", parents=[parent])
    p.set_defaults(func=cmd_relay)


def add_ssh_args(p: argparse.ArgumentParser) -> None:
    """[USER@]HOST and how to reach lightvm there (shared by ``migrate`` and ``daemon connect``)."""
    p.add_argument("target", metavar="[USER@]HOST")
    p.add_argument("--port", type=int, help="SSH port (default: the SSH config's Port for HOST, else 22)")
    p.add_argument("--known-hosts", type=Path, help="known_hosts file (default: ~/.ssh/known_hosts)")
    p.add_argument(
        "--identity",
        type=Path,
        help="private key file (default: the SSH config's IdentityFile for HOST, else the agent and ~/.ssh keys)",
    )
    p.add_argument(
        "--ssh-config",
        type=Path,
        metavar="FILE",
        help="OpenSSH client config whose Host aliases, HostName, User, Port and IdentityFile apply to HOST "
        "(default: ~/.ssh/config when it exists)",
    )
    p.add_argument(
        "--remote-command",
        default="lightvm",
        metavar="CMD",
        help="how to run lightvm on HOST (default: lightvm), e.g. '/opt/lv/bin/python -m lightvm.cli'",
    )
    p.add_argument("--remote-state-dir", metavar="DIR", help="--state-dir of lightvm on HOST")


def target_args(args: argparse.Namespace) -> dict[str, Any]:
    """The API's target arguments, the user's SSH config applied here (lightvmd may run as
    another user) and paths absolute (the daemon has its own working dir)."""
    from lightvm.mobility.sshconfig import resolve

    where = resolve(args.target, args.port, args.identity, args.ssh_config)
    return {
        "target": where.target,
        "port": where.port,
        "known_hosts": str(args.known_hosts.resolve()) if args.known_hosts else None,
        "identity": str(where.identity.resolve()) if where.identity else None,
        "remote_command": args.remote_command,
        "remote_state_dir": args.remote_state_dir,
    }


def print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result))
        return
    how = "through the SSH tunnel" if result["tunnel"] else "direct TCP"
    link = "kept SSH connection" if result.get("link") == "kept" else f"ssh {result['ssh_ms']:.1f} ms"
    teardown = result.get("teardown_ms")
    removed = "after this answer" if teardown is None else f"{teardown:.1f} ms later"
    print(
        f"{result['name']}: migrated to {result['destination']} ({how}) in {result['total_ms']:.1f} ms: "
        f"migration {result['migrate_ms']:.1f} ms, downtime {result['downtime_ms']:.1f} ms, "
        f"{result['bytes']} bytes sent; {link}, destination ready {result['prepare_ms']:.1f} ms "
        f"({result.get('receiver', 'migrate-receive')}), guest running there {result['handover_ms']:.1f} ms "
        f"after the stream, source removed {removed}"
    )


def cmd_relay(args: argparse.Namespace) -> int:
    """Pump bytes between stdin/stdout (an SSH channel) and this host's lightvmd socket,
    until either side closes. Exit 3 (and say so) when no lightvmd answers."""
    import os
    import select

    from lightvm.daemon import api
    from lightvm.errors import LightVMError

    root = state_root(args)
    try:
        client = api.Client.connect(root, timeout=5.0)
    except api.DaemonUnavailable as exc:
        print(f"lightvm: error: {exc} (start one: lightvm daemon start)", file=sys.stderr)
        return 3
    sock = client._sock
    sock.setblocking(True)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    try:
        while True:
            ready, _, _ = select.select([stdin, sock], [], [])
            if stdin in ready:
                data = os.read(stdin, 1 << 16)
                if not data:
                    break
                sock.sendall(data)
            if sock in ready:
                data = sock.recv(1 << 16)
                if not data:
                    break
                view = memoryview(data)
                while view:
                    view = view[os.write(stdout, view) :]
    except OSError as exc:
        raise LightVMError(f"relay to lightvmd on {root}: {exc.strerror or exc}") from exc
    finally:
        client.close()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    request = {
        "name": args.name,
        **target_args(args),
        "tunnel": not args.direct,
        "bandwidth_mib": args.bandwidth_mib,
        "downtime_ms": args.downtime_ms,
        "timeout": args.timeout,
    }
    with open_backend(args) as backend:
        print_result(backend.migrate(request, None if args.quiet else print_progress), args.json)
    return 0


def print_progress(p: dict[str, Any]) -> None:
    """One stderr line per report of the running stream (every 0.25 s, and at its end)."""
    mib = 1 << 20
    line = f"migrate: {p['status']}: {p['transferred'] / mib:.1f} MiB sent"
    if p["status"] != "completed":
        line += f", {p['remaining'] / mib:.1f} MiB left of {p['total'] / mib:.1f}, {p['mbps']:.0f} Mbit/s"
    if "downtime_ms" in p:
        line += f"; downtime {p['downtime_ms']:.1f} ms"
    print(line, file=sys.stderr, flush=True)


def cmd_receive(args: argparse.Namespace) -> int:
    from lightvm.mobility import receive

    sys.stdout.flush()
    return receive.receive(toolstack(args), timeout=args.timeout)
