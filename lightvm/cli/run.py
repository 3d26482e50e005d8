"""``lightvm run IMAGE|CONFIG``: a quick VM in one line (create, follow its console, destroy).

Why a command of its own: trying an image meant ``create``, then ``console -f``, then
``destroy`` by name, and a forgotten VM kept its memory. ``run`` ties the VM's life to the
command's: the VM is destroyed when the command ends, whether by Ctrl-C (or SIGTERM), the
guest's poweroff, its app's end (a Tinyx image: ``run`` exits with the app's status) or
QEMU's death, unless ``-d`` leaves it running and prints its name.

What to run: a config file; else an image of the image store (``lightvm image list``:
STORE/NAME/NAME.toml, as ``lightvm image build`` writes it); else a packaged example
(daytime, noop). ``--memory``/``--vcpus``/``--cmdline`` and ``KEY=VALUE`` operands are the
create's overrides (docs/config.md). The create goes through lightvmd when one runs
(lightvm/cli/backend.py), as ``create`` does; the console is the VM's log file, read here.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from lightvm.cli import vm
from lightvm.cli.backend import open_backend, toolstack
from lightvm.errors import GuestError, LightVMError, NotFoundError

RUN = (
    "Create a VM from IMAGE (an image of the image store: lightvm image list), an example's name (daytime, "
    "noop) or a CONFIG file, print its console as it runs, and destroy it when the command ends: Ctrl-C, "
    "the guest's poweroff (exit status 0), its app's end (a Tinyx image: the app's exit status) or QEMU's "
    "death (1, with the reason). -d leaves it running and "
    "prints its name. Without --name, a name in use gets a -2, -3 ... suffix."
)


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    """Add ``run`` to the CLI's subparsers."""
    text = "a quick VM: create, follow its console, destroy"
    p = vm.add_overrides_parser(sub, "run", parents=[parent], help=text, description=RUN)
    p.add_argument("target", metavar="IMAGE|CONFIG", help="image store name, example name, or config file")
    vm.add_overrides(p)
    p.add_argument("--memory", metavar="M", help="guest RAM, as the config's memory (64M, 1G)")
    p.add_argument("--vcpus", metavar="N", help="virtual CPUs")
    p.add_argument("--cmdline", metavar="S", help="the guest's command line")
    p.add_argument("--name", help="VM name (default: the config's, made unique)")
    p.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto", help="accelerator (as create's)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for READY")
    publish = "forward a host port to the first vif (user networking)"
    p.add_argument("--publish", action="append", default=[], metavar="[ADDR:]HOSTPORT:GUESTPORT[/udp]", help=publish)
    p.add_argument("-d", "--detach", action="store_true", help="leave the VM running; print its name")
    p.set_defaults(func=cmd_run)


def resolve_target(target: str) -> Path:
    """The config file ``run`` means by ``target``: a file; an image store's image; an example.

    :raise NotFoundError: none of the three, saying where it looked.
    """
    path = Path(target)
    if path.is_file():
        return path
    if len(path.parts) == 1:
        from tinyx.image import store

        folder = store.default_dir() / target
        config = folder / f"{target}.toml"
        if config.is_file() and (folder / store.REPORT).is_file():
            return config
        from lightvm.paths import example, examples_dir

        found = example(target)
        if found is not None:
            return found
        names = sorted(p.stem for p in examples_dir().glob("*.toml"))
        raise NotFoundError(
            f"{target}: no such file, no image {target!r} in {store.default_dir()} (lightvm image list; "
            f"lightvm image build {target}) and no example of that name ({', '.join(names)})"
        )
    raise NotFoundError(f"{target}: no such config file")


def overrides_of(args: argparse.Namespace) -> list[str]:
    """The KEY=VALUE overrides: the operands, then --memory, --vcpus, --cmdline (which win)."""
    items = list(args.overrides)
    for key in ("memory", "vcpus", "cmdline"):
        value = getattr(args, key)
        if value is not None:
            items.append(f"{key}={value}")
    return items


def free_name(base: str, taken: set[str]) -> str:
    """``base``, else ``base-2``, ``base-3``...: the first not in ``taken``."""
    if base not in taken:
        return base
    n = 2
    while f"{base}-{n}" in taken:
        n += 1
    return f"{base}-{n}"


def cmd_run(args: argparse.Namespace) -> int:
    from lightvm.spec import load_spec, parse_overrides

    config = resolve_target(args.target)
    overrides = parse_overrides(overrides_of(args))
    name = args.name
    if name is None:
        spec = load_spec(config, overrides=overrides)  # the name to start from; errors before any work
        name = free_name(spec.name, set(toolstack(args).state.names()))
    create = argparse.Namespace(
        config=str(config),
        name=name,
        count=1,
        accel=args.accel,
        jobs=None,
        timeout=args.timeout,
        publish=args.publish,
        overrides=[],
    )
    request = vm.create_request(create)
    if overrides:
        request["overrides"] = overrides
    with open_backend(args) as backend:
        if backend.routed:
            result, signum = _create_uninterrupted(backend, request)
        else:  # in this process, an interrupted create removes what it made
            (result,), signum = backend.create(request, lambda r, done, count: None), None
    if signum is not None:  # Ctrl-C (or SIGTERM) while lightvmd created it: it exists now
        _destroy(args, result["name"])
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)
    vm.print_accel_note(args.accel, [result])
    if args.detach:
        print(result["name"])
        return 0
    ready = (result.get("boot_ms") or {}).get("ready") or 0.0
    network = f"; {result['network']}" if result.get("network") else ""
    print(
        f"lightvm: {result['name']} READY in {ready:.1f} ms ({result['accel']}, pid {result['pid']}){network}; "
        "its console follows; Ctrl-C destroys it",
        file=sys.stderr,
        flush=True,
    )
    try:
        follow(args, result["name"])
    finally:
        outcome = _destroy(args, result["name"])
    if outcome is None or outcome[0] == "halted":
        return 0
    status = app_exit_status(outcome[1])
    if status is not None:
        print(f"lightvm: {result['name']}: the app exited with status {status}; the VM was destroyed", file=sys.stderr)
        return status
    raise GuestError(f"{result['name']}: {outcome[0]}: {outcome[1] or 'QEMU exited'}; the VM was destroyed")


# A Tinyx guest's init (tinyx/init/app.c lv_app_describe) ends the VM when its app ends;
# the VM's exit reason then carries the app's status, which `run` exits with, as
# `docker run` does: a one-shot app is not a crash.
_APP_EXIT = re.compile(r"guest error APP: app exited with status (\d+)")
_APP_SIGNAL = re.compile(r"guest error APP: app killed by signal (\d+)")


def app_exit_status(detail: str) -> int | None:
    """The exit status ``run`` reports for a VM whose app ended: the app's own (128 + N
    for a signal, as a shell says it), or None when the VM ended for another reason."""
    if m := _APP_EXIT.search(detail or ""):
        return int(m.group(1))
    if m := _APP_SIGNAL.search(detail or ""):
        return 128 + int(m.group(1))
    return None


def _create_uninterrupted(backend: Any, request: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """The create through lightvmd with SIGINT and SIGTERM held until its answer (and
    which came, if one did): interrupted while waiting, this command would leave lightvmd
    to finish a VM nobody would destroy. Bounded by the request's timeout."""
    got: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        got.append(signum)

    previous = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        (result,) = backend.create(request, lambda r, done, count: None)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return result, (got[0] if got else None)


def follow(args: argparse.Namespace, name: str) -> None:
    """Copy the VM's console log to stdout as it grows, until the VM stops running."""
    ts = toolstack(args)
    path = ts.console_path(name)
    with open(path, "rb") if path.exists() else open(os.devnull, "rb") as f:
        vm.follow_console(f, lambda: vm.alive(ts, name), sys.stdout.buffer)


def _destroy(args: argparse.Namespace, name: str) -> tuple[str, str] | None:
    """Destroy the VM (a second Ctrl-C cannot interrupt it); how it had ended
    (status, detail), or None when it was still running (the command was interrupted)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ts = toolstack(args)
        infos = {i.name: i for i in ts.list()}
        info = infos.get(name)
        outcome = None if info is None or info.status in ("running", "paused") else (info.status, info.detail)
        with open_backend(args) as backend:
            _, errors = backend.destroy([name])
        if errors:
            raise LightVMError("; ".join(errors))
        return outcome
    except NotFoundError:
        return None  # destroyed meanwhile by someone else
    finally:
        signal.signal(signal.SIGINT, previous)
