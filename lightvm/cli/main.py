"""The ``lightvm`` command.

Exit status: 0 on success, 1 on a lightvm error (one line on stderr:
``lightvm: error: <what went wrong>``), 2 on a usage error, 130 when interrupted.
Scriptable interface (kept stable): ``create --json`` prints one JSON object per VM
(one line each) with ``name`` and ``boot_ms`` {qemu_up, resumed, guest_entry,
devices_up, ready}; ``list --json`` prints a JSON array; ``--state-dir`` (or
``$LIGHTVM_STATE_DIR``) keeps separate runs apart.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from lightvm.errors import LightVMError, NotFoundError

if TYPE_CHECKING:
    from lightvm.toolstack import CreateResult, Toolstack

_T_IMPORT = time.perf_counter()

DESCRIPTION = """\
lightvm: start single-application micro-VMs on QEMU as fast as containers.

A VM is described by a config file (TOML, or chaos-style JSON) naming its kernel
(a PVH ELF), memory, vCPUs, command line, vifs and disks. Each VM is one QEMU
process (-M microvm) whose devices are described to the guest in a NoXS page
(shared memory), with no control-plane daemon in the way.
"""

EPILOG = """\
examples:
  lightvm create examples/noop.toml            boot one VM, print the boot breakdown
  lightvm create examples/noop.toml -n 50      boot noop-0 .. noop-49
  lightvm list                                 what runs, what crashed
  lightvm shutdown noop                        clean guest poweroff, then destroy
  lightvm --state-dir /tmp/s create x.toml     keep this run apart from others
"""


def _state_parent() -> argparse.ArgumentParser:
    # --state-dir is accepted before or after the command; SUPPRESS keeps the
    # subcommand's default from overwriting a value given before it.
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--state-dir",
        type=Path,
        default=argparse.SUPPRESS,
        help="run dir holding the VMs' state (default: $LIGHTVM_STATE_DIR, /run/lightvm as root, "
        "else $XDG_RUNTIME_DIR/lightvm)",
    )
    return parent


def build_parser(with_network: bool = True) -> argparse.ArgumentParser:
    """The argument parser. ``with_network`` adds ``network`` (imports pyroute2: slow)."""
    parent = _state_parent()
    parser = argparse.ArgumentParser(
        prog="lightvm",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[parent],
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "create",
        parents=[parent],
        help="create and boot VMs from a config file",
        description="Create VMs from CONFIG and wait until each guest reports READY. Prints the "
        "boot breakdown (ms since the create started): QEMU up (QMP answered), vCPU "
        "resumed, guest entry, devices up, READY. With -n N, creates N VMs named "
        "NAME-0..NAME-N-1, all or none.",
    )
    p.add_argument("config", type=Path, help="VM config file (.toml or chaos-style .json)")
    p.add_argument("--name", help="VM name (default: the config's name, else the file name)")
    p.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="accelerator: auto probes whether kvm really works here (cached per host), else tcg",
    )
    p.add_argument("-n", "--count", type=int, default=1, metavar="N", help="create N VMs (NAME-0..NAME-N-1)")
    p.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=None,
        metavar="J",
        help="create up to J VMs at a time (default: number of CPUs)",
    )
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for READY per VM")
    p.add_argument(
        "--publish",
        action="append",
        default=[],
        metavar="[ADDR:]HOSTPORT:GUESTPORT[/udp]",
        help="forward a host port to the first vif (user networking only; one VM)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per VM (one per line)")
    p.set_defaults(func=cmd_create)

    p = sub.add_parser(
        "list",
        parents=[parent],
        help="list VMs and their status",
        description="List every VM of the state dir: creating, running, paused, halted (clean "
        "guest poweroff), crashed (QEMU died), incomplete (its create was killed). "
        "Dead VMs are reaped (their shared memory and socket freed); destroy removes "
        "the rest.",
    )
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "destroy",
        parents=[parent],
        help="stop VMs at once and remove every trace",
        description="Stop each VM's QEMU (QMP quit, then SIGKILL) and remove its process, "
        "socket, shared memory, devices and state folder. Works on any status.",
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--all", action="store_true", help="destroy every VM in the state dir")
    p.set_defaults(func=cmd_destroy)

    p = sub.add_parser(
        "shutdown",
        parents=[parent],
        help="clean guest poweroff (NoXS sysctl), then destroy",
        description="Ask the guest to power off through its NoXS sysctl page (plus an NMI so it "
        "wakes at once), wait for QEMU to exit, then destroy the VM unless --keep.",
    )
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--keep", action="store_true", help="keep the VM's folder (listed as halted)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for the poweroff")
    p.set_defaults(func=cmd_shutdown)

    p = sub.add_parser("pause", parents=[parent], help="stop a VM's vCPUs (QMP stop)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_pause)

    p = sub.add_parser("unpause", parents=[parent], help="resume a paused VM's vCPUs (QMP cont)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(func=cmd_unpause)

    p = sub.add_parser(
        "console",
        parents=[parent],
        help="print a VM's serial console",
        description="Print the guest's serial console log; with -f, keep printing new output "
        "until the VM stops (Ctrl-C to leave).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("-f", "--follow", action="store_true", help="follow the console while the VM runs")
    p.set_defaults(func=cmd_console)

    p = sub.add_parser(
        "info",
        parents=[parent],
        help="everything known about one VM",
        description="Show a VM's record (spec, PID, accelerator, boot breakdown), its QEMU "
        "runstate and the live guest boot record (heartbeat, app counter).",
    )
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    from lightvm.cli import daemon

    daemon.register(sub)

    from lightvm.cli import checkpoint

    checkpoint.register(sub)

    from lightvm.bench import cli as bench_cli

    bench_cli.register(sub)

    if with_network:
        from lightvm.cli import network

        network.register(sub)
    return parser


def _toolstack(args: argparse.Namespace) -> Toolstack:
    from lightvm.toolstack import Toolstack

    state_dir = getattr(args, "state_dir", None)
    if state_dir is not None:
        # network_cli (and children) read the same dir from the environment.
        os.environ["LIGHTVM_STATE_DIR"] = str(state_dir)
    return Toolstack(state_dir, boot_timeout=getattr(args, "timeout", 10.0))


def _fmt_ms(value: float | None) -> str:
    return f"{value:8.1f} ms" if value is not None else "       - ms"


def cmd_create(args: argparse.Namespace) -> int:
    from lightvm.spec import load_spec

    spec = load_spec(args.config)
    if args.publish:
        spec = spec.with_publish(args.publish, args.count)
    ts = _toolstack(args)
    total = args.count
    start = time.perf_counter()

    def progress(result: CreateResult, done: int, count: int) -> None:
        if args.json:
            print(json.dumps(result.as_dict()), flush=True)
        elif count > 1:
            print(f"[{done}/{count}] {result.name}: READY in {result.boot_ms.get('ready') or 0:.1f} ms", flush=True)

    results = ts.create(spec, name=args.name, count=total, accel=args.accel, jobs=args.jobs, progress=progress)
    if args.json:
        return 0
    wall = (time.perf_counter() - start) * 1000
    if len(results) == 1:
        r = results[0]
        print(f"{r.name}: {r.app or 'guest'} READY in {r.boot_ms.get('ready') or 0:.1f} ms ({r.accel}, pid {r.pid})")
        from lightvm.boot import BOOT_STEPS

        for key, label, what in BOOT_STEPS:
            print(f"  {label:<13}{_fmt_ms(r.boot_ms.get(key))}  {what}")
        if r.network:
            print(f"  {r.network}")
        print("  path: cold (one-shot: no lightvmd answers on this state dir)")
        print(f"  (lightvm command: {(time.perf_counter() - _T_IMPORT) * 1000:.1f} ms since its import)")
    else:
        import statistics

        ready = [v for r in results if (v := r.boot_ms.get("ready")) is not None]
        med, worst = (statistics.median(ready), max(ready)) if ready else (0.0, 0.0)
        print(f"created {len(results)} VMs in {wall:.0f} ms; READY median {med:.1f} ms, max {worst:.1f} ms")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    infos = _toolstack(args).list()
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=1))
        return 0
    if not infos:
        print("no VMs")
        return 0
    print(f"{'NAME':<24} {'STATUS':<11} {'PID':>7} {'ACCEL':<5} {'MEM':>6} {'VCPU':>4} {'READY':>9}  DETAIL")
    for i in infos:
        mem = f"{i.memory_mib}M" if i.memory_mib else "-"
        ready = f"{i.ready_ms:.1f}ms" if i.ready_ms is not None else "-"
        print(
            f"{i.name:<24} {i.status:<11} {i.pid or '-':>7} {i.accel or '-':<5} {mem:>6} {i.vcpus or '-':>4} "
            f"{ready:>9}  {i.detail}"
        )
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    ts = _toolstack(args)
    if args.all == bool(args.names):
        raise LightVMError("destroy: give VM names or --all (not both)")
    names = ts.state.names() if args.all else args.names
    errors = []
    for name in names:
        try:
            ts.destroy(name)
        except LightVMError as exc:
            errors.append(str(exc))
    if len(names) > 1:
        print(f"destroyed {len(names) - len(errors)} VMs")
    if errors:
        raise LightVMError("; ".join(errors))
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    ts = _toolstack(args)
    for name in args.names:
        ms = ts.shutdown(name, keep=args.keep, timeout=args.timeout)
        print(f"{name}: powered off in {ms:.1f} ms" + (" (kept, halted)" if args.keep else ""))
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    ts = _toolstack(args)
    for name in args.names:
        print(f"{name}: paused in {ts.pause(name):.2f} ms")
    return 0


def cmd_unpause(args: argparse.Namespace) -> int:
    ts = _toolstack(args)
    for name in args.names:
        print(f"{name}: resumed in {ts.unpause(name):.2f} ms")
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    from lightvm.util import wait_until

    ts = _toolstack(args)
    path = ts.console_path(args.name)
    out = sys.stdout.buffer
    try:
        with open(path, "rb") as f:
            out.write(f.read())
            out.flush()
            if not args.follow:
                return 0
            while True:

                def more() -> tuple[bytes, bool] | None:
                    data = f.read()
                    try:
                        alive = ts.is_alive(args.name)
                    except NotFoundError:
                        alive = False  # destroyed while we followed
                    return (data, alive) if data or not alive else None

                # None when the (long) deadline passed with nothing new: keep following.
                got = wait_until(more, timeout=3600.0, interval=0.05, max_interval=0.25)
                if got is None:
                    continue
                data, alive = got
                out.write(data)
                out.flush()
                if not alive:
                    out.write(f.read())
                    out.flush()
                    return 0
    except FileNotFoundError:
        return 0  # the VM has printed nothing yet (or was just destroyed)


def cmd_info(args: argparse.Namespace) -> int:
    info = _toolstack(args).info(args.name)
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    for key in ("name", "status", "qemu_status", "id", "uuid", "pid", "accel", "folder", "console", "noxs_path"):
        if key in info:
            print(f"{key + ':':<13}{info[key]}")
    if info.get("spec"):
        spec = info["spec"]
        print(
            f"{'spec:':<13}kernel {spec.get('kernel')}, {spec.get('memory')} MiB, {spec.get('vcpus')} vCPU, "
            f"cmdline {spec.get('cmdline')!r}, {len(spec.get('vifs', []))} vif(s), "
            f"{len(spec.get('disks', []))} disk(s)"
        )
    if info.get("boot_ms"):
        from lightvm.boot import BOOT_STEPS

        boot = info["boot_ms"]
        print("boot:        " + ", ".join(f"{label} {boot[k]:.1f} ms" for k, label, _ in BOOT_STEPS if boot.get(k)))
    if info.get("guest"):
        print("guest:       " + ", ".join(f"{k} {v}" for k, v in info["guest"].items()))
    if info.get("exit_reason"):
        print(f"{'exit:':<13}{info['exit_reason']}")
    return 0


_SIGTERM_OWNER = 0


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _SIGTERM_OWNER:
        # A forked helper (pyroute2 forks some) inherited this handler: die as by default
        # instead of unwinding the parent's stack in the child.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    # Unwind like Ctrl-C, so a create being killed politely removes what it made.
    raise SystemExit(128 + signum)


def _wants_network(argv: list[str]) -> bool:
    return "network" in argv or not argv or any(a in ("-h", "--help") for a in argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``lightvm`` command; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(with_network=_wants_network(argv))
    args = parser.parse_args(argv)
    global _SIGTERM_OWNER
    _SIGTERM_OWNER = os.getpid()
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (an embedding program): keep its handler
        previous = None
    try:
        from lightvm.cli import daemon

        # A daemon answering on the state dir's socket does the work (and may use its pool).
        routed = daemon.dispatch(args)
        result: Any = routed if routed is not None else args.func(args)
        return int(result or 0)
    except LightVMError as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"lightvm: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lightvm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)  # main() called in-process: leave no trace


if __name__ == "__main__":
    sys.exit(main())
