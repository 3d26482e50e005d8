"""``lightvm daemon run|start|stop|status|connect``: lightvmd's life cycle from the CLI.

Routing the VM commands through a running lightvmd is :mod:`lightvm.cli.backend`'s job;
this module only starts, stops and describes the daemon. lightvm.daemon is imported
when a daemon command runs, not when the parser is built (every CLI start builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lightvm.cli.backend import state_root as _state_root
from lightvm.errors import StateError
from lightvm.util import proc_alive, tail, wait_until

START_TIMEOUT = 30.0
STOP_TIMEOUT = 60.0
UNIT = Path(__file__).resolve().parent.parent / "daemon" / "lightvmd.service"

# run and start: their parsers and the defaults --config files fill in (lightvm/cli/daemonconf.py)
_CONFIGURABLE: dict[str, tuple[argparse.ArgumentParser, dict[str, Any]]] = {}

DAEMON = (
    "lightvmd serves a JSON API on STATE/lightvmd.sock (mode 0600; 0660 with "
    "--group) and keeps prepared VM shells (paused QEMUs) per flavour, so that a create "
    "is only 'write the NoXS page, cont'. The CLI uses it when it runs."
)


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    """Add ``daemon`` and its subcommands to the CLI's subparsers (``parent``: --state-dir)."""
    text = "lightvmd: the daemon holding prepared VM shells (the split toolstack)"
    p = sub.add_parser("daemon", parents=[parent], help=text, description=DAEMON)
    dsub = p.add_subparsers(dest="daemon_command", metavar="ACTION", required=True)
    for action, helptext in (
        ("run", "run in the foreground (under a service manager); SIGTERM stops it"),
        ("start", "start detached and wait until the socket answers"),
    ):
        q = dsub.add_parser(action, parents=[parent], help=helptext)
        q.add_argument(
            "--config",
            type=Path,
            metavar="FILE",
            help="TOML file of these options (keys: their long names, e.g. pool-size = 4); "
            "the command line wins over it",
        )
        q.add_argument("--group", help="let this group use the socket (mode 0660)")
        q.add_argument(
            "--pool",
            action="append",
            default=[],
            type=Path,
            metavar="CONFIG",
            help="keep prepared shells for this VM config's flavour (repeatable)",
        )
        q.add_argument(
            "--pool-size",
            type=int,
            default=4,
            metavar="N",
            help="shells per flavour at start and when idle; the pool grows above it with demand (default 4)",
        )
        q.add_argument(
            "--pool-max", type=int, default=64, metavar="N", help="shells per flavour and in all at most (default 64)"
        )
        q.add_argument(
            "--pool-idle",
            type=float,
            default=30.0,
            metavar="SECONDS",
            help="a grown pool shrinks back after this long below its peak demand (default 30)",
        )
        q.add_argument(
            "--pool-parallel",
            type=int,
            default=0,
            metavar="N",
            help="shells prepared at once (default 0: one per core)",
        )
        q.add_argument(
            "--pool-memory",
            type=int,
            default=2048,
            metavar="MIB",
            help="memory budget of all shells: guest RAM + 16 MiB each (default 2048)",
        )
        q.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto", help="accelerator of the shells")
        q.add_argument(
            "--pool-variant",
            choices=("waiting", "stopped", "paused"),
            default="waiting",
            help="waiting (default, fastest): the guest booted to its wait-for-config point and "
            "sleeps there until a byte on its console wakes it (a guest without that support is "
            "stopped instead); stopped: booted there, then its vCPUs stopped, resumed with QMP "
            "cont; paused: QEMU started with -S, the guest never ran",
        )
        q.add_argument(
            "--incoming-size",
            type=int,
            default=1,
            metavar="N",
            help="prepared -incoming QEMUs per checkpoint kind seen (restore, incoming migration; "
            "default 1, 0: none): the next restore or migration of that kind skips the QEMU start",
        )
        q.add_argument(
            "--incoming",
            action="append",
            default=[],
            type=Path,
            metavar="CHECKPOINT|TEMPLATE",
            help="prepare -incoming QEMUs for this checkpoint file's kind, or mapping this template folder's RAM, "
            "from the start (repeatable)",
        )
        if action == "run":
            q.add_argument(
                "--log-file",
                type=Path,
                metavar="FILE",
                help="log to FILE, rotated (1 MiB, 3 backups) instead of stderr (`daemon start` "
                "passes STATE/lightvmd.log); -v adds the toolstack's steps, -vv QMP traffic",
            )
        if action == "run":  # logs through lightvm/daemon/logsetup.py, not the CLI's -v set-up
            q.set_defaults(func=cmd_daemon_run, own_logging=True)
        else:
            q.set_defaults(func=cmd_daemon_start)
        from lightvm.cli import daemonconf

        _CONFIGURABLE[action] = (q, daemonconf.take_defaults(q))
    q = dsub.add_parser(
        "unit",
        parents=[parent],
        help="print a systemd unit running this lightvm's daemon (Type=notify)",
        description="Print lightvmd.service with ExecStart set to this Python and lightvm, "
        "running `daemon run` with the given --config (and --state-dir). Redirect it to "
        "/etc/systemd/system/lightvmd.service.",
    )
    q.add_argument("--config", type=Path, metavar="FILE", help="the daemon config file the service reads")
    q.set_defaults(func=cmd_daemon_unit)
    q = dsub.add_parser(
        "connect",
        parents=[parent],
        help="open (and keep) an SSH connection to a migration destination now",
        description="Make the daemon connect to [USER@]HOST (host key checked against known_hosts; "
        "an unknown or changed key is refused) and open a relay to the lightvmd there, so that the "
        "first `lightvm migrate` to it is already fast. Prints what it found there.",
    )
    from lightvm.cli.checkpoint import add_ssh_args

    add_ssh_args(q)
    q.add_argument("--drop", action="store_true", help="close the kept connection instead")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_daemon_connect)
    q = dsub.add_parser("stop", parents=[parent], help="stop the daemon (SIGTERM); VMs keep running")
    q.set_defaults(func=cmd_daemon_stop)
    q = dsub.add_parser("status", parents=[parent], help="is a daemon running; its pool")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=cmd_daemon_status)
    from lightvm.cli import daemonlog

    daemonlog.register(dsub, parent)


def _daemon_argv(args: argparse.Namespace, root: Path) -> list[str]:
    argv = [sys.executable, "-m", "lightvm.cli", "--state-dir", str(root), "daemon", "run"]
    if args.group:
        argv += ["--group", args.group]
    for cfg in args.pool:
        argv += ["--pool", str(Path(cfg).resolve())]
    argv += ["--pool-size", str(args.pool_size), "--pool-max", str(args.pool_max)]
    argv += ["--pool-memory", str(args.pool_memory), "--accel", args.accel, "--pool-variant", args.pool_variant]
    argv += ["--pool-idle", str(args.pool_idle), "--pool-parallel", str(args.pool_parallel)]
    argv += ["--incoming-size", str(args.incoming_size)]
    for ckpt in args.incoming:
        argv += ["--incoming", str(Path(ckpt).resolve())]
    from lightvm.daemon.server import LOG_NAME

    argv += ["--log-file", str(root / LOG_NAME)] + ["-v"] * args.verbose
    return argv


def _configure(args: argparse.Namespace) -> None:
    from lightvm.cli import daemonconf

    parser, defaults = _CONFIGURABLE[args.daemon_command]
    daemonconf.apply(args, parser, defaults)


def unit_text(config: Path | None, state_dir: str | None) -> str:
    """The service file with ExecStart for this interpreter's lightvm."""
    import shlex

    argv = [sys.executable, "-m", "lightvm.cli"]
    if state_dir:
        argv += ["--state-dir", str(Path(state_dir).resolve())]
    argv += ["daemon", "run"]
    if config is not None:
        argv += ["--config", str(config.resolve())]
    return UNIT.read_text().replace("@EXEC_START@", shlex.join(argv))


def cmd_daemon_unit(args: argparse.Namespace) -> int:
    text = unit_text(args.config, getattr(args, "state_dir", None))
    sys.stdout.write(json.dumps({"unit": text}) + "\n" if args.json else text)
    return 0


def cmd_daemon_run(args: argparse.Namespace) -> int:
    from lightvm.daemon import logsetup
    from lightvm.daemon.server import DaemonConfig, run

    _configure(args)
    handler = logsetup.configure(args.log_file, args.verbose)
    config = DaemonConfig(
        state_root=_state_root(args),
        group=args.group,
        pool_configs=[Path(p).resolve() for p in args.pool],
        pool_size=args.pool_size,
        pool_max=args.pool_max,
        pool_memory_mib=args.pool_memory,
        accel=args.accel,
        pool_variant=args.pool_variant,
        pool_idle_s=args.pool_idle,
        pool_parallel=args.pool_parallel,
        incoming_size=args.incoming_size,
        incoming_files=[Path(p).resolve() for p in args.incoming],
    )
    try:
        return run(config)
    finally:
        logsetup.unconfigure(handler)


def cmd_daemon_connect(args: argparse.Namespace) -> int:
    from lightvm.cli.checkpoint import target_args
    from lightvm.daemon import api

    root = _state_root(args)
    try:
        client = api.Client.connect(root, timeout=2.0)
    except api.DaemonUnavailable:
        raise StateError(f"no lightvmd on {root}: start one first (lightvm daemon start)") from None
    with client:
        request = {"action": "drop" if args.drop else "connect", **target_args(args)}
        info = client.call("ssh", request, timeout=60.0)
    if args.json:
        print(json.dumps(info))
    elif args.drop:
        print(f"{args.target}: " + ("connection closed" if info["dropped"] else "no kept connection"))
    else:
        print(_session_line(info))
    return 0


def _session_line(s: dict[str, Any]) -> str:
    there = (
        f"lightvmd pid {s['remote_lightvmd']} there, incoming shells (at last contact): "
        + (", ".join(f"{f['flavour']} {f['ready']} ready" for f in s["remote_incoming"]) or "none yet")
        if s.get("remote_lightvmd")
        else f"no lightvmd there ({s.get('no_daemon') or 'not checked yet'}): migrate-receive per migration"
    )
    state = "connected" if s["connected"] else "disconnected"
    return (
        f"  ssh {s['target']}:{s['port']}: {state} (handshake {s['connect_ms']:.0f} ms), {s['idle_relays']} idle "
        f"relay(s), {s['migrations']} migration(s); {there}"
    )


def cmd_daemon_start(args: argparse.Namespace) -> int:
    from lightvm.daemon import api
    from lightvm.daemon.server import LOG_NAME, OUT_NAME, read_pid

    _configure(args)
    root = _state_root(args).resolve()
    running = read_pid(root)
    if running:
        raise StateError(f"lightvmd already runs on {root} (pid {running[0]})")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    # its log goes to LOG_NAME (rotated, lightvm/daemon/logsetup.py); stdout/stderr, only what
    # bypasses logging (a crash before the set-up, a traceback), to OUT_NAME, new per start
    log_path, out_path = root / LOG_NAME, root / OUT_NAME
    log = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen(
            _daemon_argv(args, root),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd="/",
        )
    finally:
        os.close(log)

    def answers() -> dict[str, Any] | None:
        if proc.poll() is not None:
            said = " ".join(t for t in (tail(out_path, 400), tail(log_path, 400)) if t)
            raise StateError(f"lightvmd exited at start ({proc.returncode}): {said}")
        try:
            with api.Client.connect(root, timeout=1.0) as client:
                result: dict[str, Any] = client.call("ping", timeout=2.0)
                return result if result.get("pid") == proc.pid else None
        except api.DaemonUnavailable:
            return None

    info = wait_until(answers, timeout=START_TIMEOUT, interval=0.005, max_interval=0.1)
    if info is None:
        proc.send_signal(signal.SIGTERM)
        raise StateError(f"lightvmd did not answer within {START_TIMEOUT:.0f} s (log: {log_path})")
    if args.json:
        print(json.dumps({"action": "started", "pid": proc.pid, "socket": str(api.socket_path(root))}))
    else:
        print(f"lightvmd started (pid {proc.pid}) on {api.socket_path(root)}")
    return 0


def cmd_daemon_stop(args: argparse.Namespace) -> int:
    from lightvm.daemon.server import read_pid

    root = _state_root(args)
    running = read_pid(root)
    if running is None:
        print(json.dumps({"action": "none", "pid": None}) if args.json else f"no lightvmd on {root}")
        return 0
    pid, start = running
    os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: not proc_alive(pid, start), timeout=STOP_TIMEOUT, interval=0.01, max_interval=0.1):
        raise StateError(f"lightvmd (pid {pid}) did not stop within {STOP_TIMEOUT:.0f} s")
    if args.json:
        print(json.dumps({"action": "stopped", "pid": pid}))
    else:
        print(f"lightvmd (pid {pid}) stopped; VMs keep running")
    return 0


def cmd_daemon_status(args: argparse.Namespace) -> int:
    from lightvm.daemon import api

    root = _state_root(args)
    try:
        with api.Client.connect(root, timeout=2.0) as client:
            info = client.call("ping", timeout=5.0)
    except api.DaemonUnavailable:
        if args.json:
            print(json.dumps({"running": False}))
        else:
            print(f"lightvmd: not running on {root}")
        return 3
    if args.json:
        print(json.dumps({"running": True, **info}))
        return 0
    up = time.time() - float(info.get("started", time.time()))
    print(f"lightvmd: running, pid {info['pid']}, up {up:.0f} s, API v{info['v']}, {api.socket_path(root)}")
    warm_cli = (info.get("warm_cli") or {}).get("pid")
    if warm_cli:
        from lightvm.daemon.warmcli import SOCKET_NAME

        print(f"  warm CLI server: pid {warm_cli} on {os.path.join(root, SOCKET_NAME)} (the launcher's VM commands)")
    else:
        print("  warm CLI server: not running (the lightvm command runs lightvm-py; see `lightvm daemon log`)")
    pool = info.get("pool") or {}
    for f in pool.get("flavours", []):
        print(f"  pool {f['flavour']}: {f['ready']} ready, {f['preparing']} preparing, target {f.get('target', '-')}")
        if "hits" in f:
            rate = "-" if f["hit_rate"] is None else f"{f['hit_rate'] * 100:.1f} %"
            print(
                f"    hit rate {rate}: {f['hits']} hits, {f['waited']} after waiting for a shell, "
                f"{f['misses']} misses; {f['demand_per_s']} creates/s, {f['refills_per_s']} refills/s "
                f"({f['refill_ms']} ms each), {f['shrunk']} shrunk"
            )
    if pool:
        print(
            f"  taken {pool['taken']}, missed {pool['missed']}, memory {pool['memory_committed_mib']}/"
            f"{pool['memory_budget_mib']} MiB, max {pool['max_shells']} shells, "
            f"{pool.get('parallel', 1)} prepare(s) at once, idle {pool.get('idle_s', '-')} s"
        )
        if pool.get("last_path"):
            print(f"  last create: path: {pool['last_path']}")
    for f in info.get("incoming") or []:
        loaded = f" ({f['loaded']} with the template loaded)" if f.get("loaded") else ""
        print(f"  incoming {f['flavour']}: {f['ready']} ready{loaded}, {f['preparing']} preparing")
    for s in info.get("ssh") or []:
        print(_session_line(s))
    return 0


__all__ = ["register"]
