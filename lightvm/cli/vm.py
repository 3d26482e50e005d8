"""``lightvm create|list|destroy|shutdown|pause|unpause|console|info``: the VM commands.

Each command prints once, from the data a :class:`~lightvm.cli.backend.Backend` returns,
whether lightvmd or this process did the work; only what differs by nature (the
``path:`` of a create, per-VM progress, which lightvmd cannot stream) looks at which.
"""

from __future__ import annotations

import os
import sys
import time

from lightvm import jsonline
from lightvm.cli import IMPORTED_AT
from lightvm.cli.backend import open_backend, toolstack
from lightvm.errors import LightVMError, NotFoundError

# The thin path (lightvm/cli/thin.py) runs these commands without argparse: this module
# imports at run time only what their printing needs (docs/cli-startup.md).
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

    from lightvm.cli.backend import Backend

CREATE = (
    "Create VMs from CONFIG and wait until each guest reports READY. Prints the boot breakdown (ms since "
    "the create started): QEMU up (QMP answered), vCPU resumed, guest entry, devices up, READY. With -n N, "
    "creates N VMs named NAME-0..NAME-N-1, all or none."
)
LIST = (
    "List every VM of the state dir: creating, running, paused, halted (clean guest poweroff), crashed "
    "(QEMU died), incomplete (its create was killed). Dead VMs are reaped (their shared memory and socket "
    "freed); destroy removes the rest."
)
DESTROY = (
    "Stop each VM's QEMU (QMP quit, then SIGKILL) and remove its process, socket, shared memory, devices "
    "and state folder. Works on any status."
)
SHUTDOWN = (
    "Ask the guest to power off through its NoXS sysctl page (plus an NMI so it wakes at once), wait for "
    "QEMU to exit, then destroy the VM unless --keep."
)
CONSOLE = (
    "Print the guest's serial console log; with -f, keep printing new output until the VM stops (Ctrl-C to leave)."
)
INFO = (
    "Show a VM's record (spec, PID, accelerator, boot breakdown), its QEMU runstate and the live guest boot "
    "record (heartbeat, app counter)."
)
INFO_KEYS = ("name", "status", "qemu_status", "id", "uuid", "pid", "accel", "folder", "console", "noxs_path")


def add_command(
    sub: Any, parent: argparse.ArgumentParser, name: str, func: Any, text: str, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand taking --state-dir (``parent``) that runs ``func(args)``."""
    p: argparse.ArgumentParser = sub.add_parser(name, parents=[parent], help=text, description=description)
    p.set_defaults(func=func)
    return p


def add_overrides_parser(sub: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """``sub.add_parser`` for a command taking KEY=VALUE overrides anywhere after its
    config (``create cfg --json memory=64M``): Python 3.11's argparse fills a ``nargs="*"``
    positional only right after the positional before it, and calls what comes after an
    option an unrecognized argument. The parser class is swapped for this one add_parser,
    derived from the one in use (lightvm's Parser: usage errors as JSON under --json)."""
    saved = sub._parser_class

    class OverridesParser(saved):  # type: ignore[misc,valid-type]
        def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
            ns, extras = super().parse_known_args(args, namespace)
            late = [a for a in extras if "=" in a and not a.startswith("-")]
            if late and isinstance(getattr(ns, "overrides", None), list):
                ns.overrides = [*ns.overrides, *late]
                extras = [a for a in extras if a not in late]
            return ns, extras

    sub._parser_class = OverridesParser
    try:
        p: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    finally:
        sub._parser_class = saved
    return p


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    """Add the VM commands to the CLI's subparsers (lightvm/cli/thin.py parses the routed
    ones without argparse: an option added here is one it does not know, so it leaves such
    a command to argparse; tests/unit/test_thin.py compares the two)."""
    from pathlib import Path

    text = "create and boot VMs from a config file"
    p = add_overrides_parser(sub, "create", parents=[parent], help=text, description=CREATE)
    p.set_defaults(func=cmd_create)
    config = "VM config file (.toml or chaos-style .json), or an example's name (daytime, noop: see lightvm host check)"
    p.add_argument("config", type=Path, help=config)
    add_overrides(p)
    p.add_argument("--name", help="VM name (default: the config's name, else the file name)")
    p.add_argument(
        "--accel",
        choices=("auto", "kvm", "tcg"),
        default="auto",
        help="accelerator: auto probes whether kvm really works here (cached per host), else tcg",
    )
    p.add_argument("-n", "--count", type=int, default=1, metavar="N", help="create N VMs (NAME-0..NAME-N-1)")
    jobs = "create up to J VMs at a time (default: number of CPUs)"
    p.add_argument("-j", "--jobs", type=int, default=None, metavar="J", help=jobs)
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for READY per VM")
    publish = "forward a host port to the first vif (user networking only; one VM)"
    p.add_argument("--publish", action="append", default=[], metavar="[ADDR:]HOSTPORT:GUESTPORT[/udp]", help=publish)
    p.add_argument("--json", action="store_true", help="print one JSON object per VM (one per line)")
    no_snapshot = (
        "boot even if the config names a snapshot (a Tinyx image's booted VM: one-shot creates start from it"
        " when it fits, the app already serving)"
    )
    p.add_argument("--no-snapshot", action="store_true", help=no_snapshot)

    add_command(sub, parent, "list", cmd_list, "list VMs and their status", LIST).add_argument(
        "--json", action="store_true", help="print a JSON array"
    )

    p = add_command(sub, parent, "destroy", cmd_destroy, "stop VMs at once and remove every trace", DESTROY)
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--all", action="store_true", help="destroy every VM in the state dir")

    p = add_command(sub, parent, "shutdown", cmd_shutdown, "clean guest poweroff (NoXS sysctl), then destroy", SHUTDOWN)
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("--keep", action="store_true", help="keep the VM's folder (listed as halted)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="seconds to wait for the poweroff")

    add_command(sub, parent, "pause", cmd_pause, "stop a VM's vCPUs (QMP stop)").add_argument(
        "names", nargs="+", metavar="NAME"
    )
    add_command(sub, parent, "unpause", cmd_unpause, "resume a paused VM's vCPUs (QMP cont)").add_argument(
        "names", nargs="+", metavar="NAME"
    )

    p = add_command(sub, parent, "console", cmd_console, "print a VM's serial console", CONSOLE)
    p.add_argument("name", metavar="NAME")
    p.add_argument("-f", "--follow", action="store_true", help="follow the console while the VM runs")

    p = add_command(sub, parent, "info", cmd_info, "everything known about one VM", INFO)
    p.add_argument("name", metavar="NAME")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_overrides(p: argparse.ArgumentParser) -> None:
    """The KEY=VALUE operands after the config (``create`` and ``run``)."""
    overrides = (
        "replace a key of the config, as xl's key=value: name, kernel, firmware, memory, vcpus, cmdline, "
        'initrd (e.g. memory=64M vcpus=2 cmdline="console=ttyS0"); checked as the file\'s keys are'
    )
    p.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE", help=overrides)


def create_request(args: argparse.Namespace) -> dict[str, Any]:
    """What a create asks its backend for: the config resolved (a file, or a packaged
    example's name), the overrides parsed and checked here (errors before any work, and
    paths taken from this working dir), the options."""
    request = {k: getattr(args, k) for k in ("config", "name", "count", "accel", "jobs", "timeout", "publish")}
    request["no_snapshot"] = getattr(args, "no_snapshot", False)
    if not os.path.exists(args.config) and os.sep not in str(args.config):
        # A bare name: the packaged example of that name (lightvm/paths.py; imported only
        # here, since pathlib is a cost every thin-path create would pay otherwise).
        from lightvm.paths import resolve_config

        request["config"] = str(resolve_config(args.config))
    overrides = getattr(args, "overrides", None)  # the thin path takes no overrides (argparse does)
    if overrides:
        from lightvm.spec import parse_overrides

        request["overrides"] = parse_overrides(overrides)
    return request


def _fmt_ms(value: float | None) -> str:
    return f"{value:8.1f} ms" if value is not None else "       - ms"


def cmd_create(args: argparse.Namespace) -> int:
    request = create_request(args)
    with open_backend(args) as backend:

        def progress(result: dict[str, Any], done: int, count: int) -> None:
            if args.json:
                print(jsonline.dumps(result), flush=True)
            elif count > 1 and not args.quiet:
                ready = result["boot_ms"].get("ready") or 0
                print(f"[{done}/{count}] {result['name']}: READY in {ready:.1f} ms", flush=True)

        start = time.perf_counter()
        results = backend.create(request, progress)
        wall = (time.perf_counter() - start) * 1000
        if args.json:
            if backend.routed:  # lightvmd answers once for all
                for r in results:
                    print(jsonline.dumps(r), flush=True)
            if not args.quiet and not backend.routed:
                print_qemu_note()
            return 0
        if not args.quiet:
            print_accel_note(args.accel, results)
            if not backend.routed:
                print_qemu_note()
        print_created(results, wall, backend)
    return 0


def accel_note(requested: str, accel: str, reason: str | None) -> str | None:
    """The line ``create`` prints when ``--accel auto`` fell back to tcg (None otherwise).

    ``reason`` is the verdict's (lightvm.accel.AccelChoice.reason, a result's
    ``accel_reason``); None when the result came without one (an older lightvmd).
    """
    if requested != "auto" or accel != "tcg" or not reason:
        return None
    return f"accel: tcg ({reason})"


def qemu_note() -> str | None:
    """The line ``create`` prints, once per cache dir, when microvm guests run on Debian's full
    QEMU because no slim build exists (an installed lightvm, a checkout without qemu/build).

    Once: it is advice (how to start ~17 ms faster), not a problem; ``lightvm host check``
    says it every time. Remembered in the host-facts cache under the slim path looked for.
    Only for a one-shot create: lightvmd chose the QEMU of a create it served (with its own
    environment) and logs the note at its start; checking here cost such a create ~20 ms
    of imports (hostfacts: ctypes, pathlib, typing), 1.3-2.4x ``python3 -c pass``.
    """
    from lightvm import hostfacts, qemubin

    slim = qemubin.SLIM_QEMU
    if os.environ.get(qemubin.ENV) or qemubin.slim_binary(slim) is not None:
        return None
    cache = hostfacts.load_cache()
    if cache.get("qemu_note") == str(slim):
        return None
    cache["qemu_note"] = str(slim)
    hostfacts.save_cache(cache)
    return f"qemu: {qemubin.explain('microvm', slim=slim)} (said once; lightvm host check says more)"


def print_qemu_note() -> None:
    note = qemu_note()
    if note:
        print(f"lightvm: {note}", file=sys.stderr)


def print_accel_note(requested: str, results: list[dict[str, Any]]) -> None:
    """Why ``--accel auto`` chose tcg, one line on stderr (stdout keeps the breakdown as it was)."""
    note = accel_note(requested, results[0]["accel"], results[0].get("accel_reason")) if results else None
    if note:
        print(note, file=sys.stderr, flush=True)


def print_created(results: list[dict[str, Any]], wall: float, backend: Backend) -> None:
    """The boot breakdown of one VM, or the summary of many."""
    if len(results) > 1:
        if backend.routed:
            paths = {p: sum(1 for r in results if r["path"] == p) for p in ("pool", "cold")}
            tail = f"path: pool {paths['pool']}, cold {paths['cold']}"
        else:
            import statistics

            ready = [v for r in results if (v := r["boot_ms"].get("ready")) is not None]
            med, worst = (statistics.median(ready), max(ready)) if ready else (0.0, 0.0)
            tail = f"READY median {med:.1f} ms, max {worst:.1f} ms"
        print(f"created {len(results)} VMs in {wall:.0f} ms; {tail}")
        return
    from lightvm.bootsteps import BOOT_STEPS

    (r,) = results
    boot = r["boot_ms"]
    print(f"{r['name']}: {r['app'] or 'guest'} READY in {boot.get('ready') or 0:.1f} ms ({r['accel']}, pid {r['pid']})")
    for key, label, what in BOOT_STEPS:
        print(f"  {label:<13}{_fmt_ms(boot.get(key))}  {what}")
    if r.get("network"):
        print(f"  {r['network']}")
    if backend.routed:
        why = f"{r['path_reason']}; " if r.get("path_reason") else ""
        print(f"  path: {r['path']} (lightvmd; {why}request -> READY reply {wall:.1f} ms at the client)")
    elif r.get("path") == "snapshot":
        where = r["path_reason"]
        print(f"  path: snapshot (one-shot: started from {where}, the image's VM booted once; --no-snapshot boots)")
        print(f"  (lightvm command: {(time.perf_counter() - IMPORTED_AT) * 1000:.1f} ms since its import)")
    else:
        why = f"; {r['path_reason']}" if r.get("path_reason") else ""
        print(f"  path: cold (one-shot: no lightvmd answers on this state dir{why})")
        print(f"  (lightvm command: {(time.perf_counter() - IMPORTED_AT) * 1000:.1f} ms since its import)")


def cmd_list(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        infos = backend.list_vms()
    if args.json:
        import json  # only here: the thin path's JSON is lightvm.jsonline (no indent there)

        print(json.dumps(infos, indent=1))
        return 0
    if not infos:
        print("no VMs")
        return 0
    print(f"{'NAME':<24} {'STATUS':<11} {'PID':>7} {'ACCEL':<5} {'MEM':>6} {'VCPU':>4} {'READY':>9}  DETAIL")
    for i in infos:
        mem = f"{i['memory_mib']}M" if i.get("memory_mib") else "-"
        ready = f"{i['ready_ms']:.1f}ms" if i.get("ready_ms") is not None else "-"
        print(
            f"{i['name']:<24} {i['status']:<11} {i.get('pid') or '-':>7} {i.get('accel') or '-':<5} {mem:>6} "
            f"{i.get('vcpus') or '-':>4} {ready:>9}  {i.get('detail', '')}"
        )
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    if args.all == bool(args.names):
        raise LightVMError("destroy: give VM names or --all (not both)")
    with open_backend(args) as backend:
        done, errors = backend.destroy(None if args.all else args.names)
    if args.json:
        for name in done:
            print(jsonline.dumps({"name": name, "action": "destroyed"}), flush=True)
    elif len(done) + len(errors) > 1:
        print(f"destroyed {len(done)} VMs")
    if errors:
        raise LightVMError("; ".join(errors))
    return 0


def cmd_shutdown(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        for name in args.names:
            ms = backend.shutdown(name, args.keep, args.timeout)
            if args.json:
                print(jsonline.dumps({"name": name, "action": "shutdown", "ms": ms, "kept": args.keep}), flush=True)
                continue
            print(f"{name}: powered off in {ms:.1f} ms" + (" (kept, halted)" if args.keep else ""))
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        for name in args.names:
            ms = backend.pause(name)
            print(
                jsonline.dumps({"name": name, "action": "paused", "ms": ms})
                if args.json
                else f"{name}: paused in {ms:.2f} ms"
            )
    return 0


def cmd_unpause(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        for name in args.names:
            ms = backend.unpause(name)
            print(
                jsonline.dumps({"name": name, "action": "resumed", "ms": ms})
                if args.json
                else f"{name}: resumed in {ms:.2f} ms"
            )
    return 0


def cmd_console(args: argparse.Namespace) -> int:
    """Not routed: the console log is a file this process reads."""
    ts = toolstack(args)
    path = ts.console_path(args.name)
    if args.json:
        return _console_json(args.name, path, args.follow)
    out = sys.stdout.buffer
    try:
        with open(path, "rb") as f:
            out.write(f.read())
            out.flush()
            if args.follow:
                follow_console(f, lambda: alive(ts, args.name), out)
            return 0
    except FileNotFoundError:
        return 0  # the VM has printed nothing yet (or was just destroyed)


def alive(ts: Any, name: str) -> bool:
    try:
        return bool(ts.is_alive(name))
    except NotFoundError:
        return False  # destroyed by someone else while we followed


def follow_console(f: Any, alive: Callable[[], bool], out: Any) -> None:
    """Copy what is appended to the console log ``f`` to ``out`` until ``alive()`` says the
    VM stopped running (then what it printed last): ``console -f`` and ``run``."""
    from lightvm.util import wait_until

    def more() -> tuple[bytes, bool] | None:
        data = f.read()
        running = alive()
        return (data, running) if data or not running else None

    while True:
        # None when the (long) deadline passed with nothing new: keep following.
        got = wait_until(more, timeout=3600.0, interval=0.05, max_interval=0.25)
        if got is None:
            continue
        data, running = got
        out.write(data)
        out.flush()
        if not running:
            out.write(f.read())
            out.flush()
            return


def _console_json(name: str, path: os.PathLike[str] | str, follow: bool) -> int:
    """``console --json``: the log so far as one object ({name, console}: bytes decoded as UTF-8,
    undecodable ones replaced). Not with -f: a stream of guest bytes has no JSON form."""
    if follow:
        raise LightVMError("console: -f prints the guest's raw bytes; drop --json (or -f)")
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        text = ""  # the VM has printed nothing yet
    print(jsonline.dumps({"name": name, "console": text}))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    with open_backend(args) as backend:
        info = backend.info(args.name)
    if args.json:
        import json

        print(json.dumps(info, indent=1, default=str))
        return 0
    for line in info_lines(info):
        print(line)
    return 0


def info_lines(info: dict[str, Any]) -> list[str]:
    """``lightvm info``'s text: the one formatter of an info dict (Toolstack.info's, which
    lightvmd's ``info`` replies unchanged), so the output is the same with or without the
    daemon (tests/functional/test_info_parity.py)."""
    lines = [f"{key + ':':<13}{'-' if info[key] is None else info[key]}" for key in INFO_KEYS if key in info]
    if info.get("spec"):
        spec = info["spec"]
        lines.append(
            f"{'spec:':<13}kernel {spec.get('kernel')}, {spec.get('memory')} MiB, {spec.get('vcpus')} vCPU, "
            f"cmdline {spec.get('cmdline')!r}, {len(spec.get('vifs', []))} vif(s), "
            f"{len(spec.get('disks', []))} disk(s)"
        )
    if info.get("boot_ms"):
        from lightvm.bootsteps import BOOT_STEPS

        boot = info["boot_ms"]
        steps = ", ".join(f"{label} {boot[k]:.1f} ms" for k, label, _ in BOOT_STEPS if boot.get(k))
        lines.append(f"{'boot:':<13}{steps}")
    if info.get("guest"):
        lines.append(f"{'guest:':<13}" + ", ".join(f"{k} {v}" for k, v in info["guest"].items()))
    if info.get("exit_reason") or info.get("exit_status"):
        seen = f" (QEMU {info['exit_status']}, seen by lightvmd)" if info.get("exit_status") else ""
        lines.append(f"{'exit:':<13}{info.get('exit_reason') or 'QEMU exited'}{seen}")
    return lines
