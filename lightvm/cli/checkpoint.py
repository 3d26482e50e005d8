"""``lightvm save|restore|migrate`` (and the hidden ``migrate-receive``), plugged into cli.py.

cli.py calls :func:`register` with its subparsers; each command sets ``func(args) -> int``
and reads ``args.state_dir``. Errors are raised as LightVMError for cli.py to print.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightvm.state import default_state_dir

if TYPE_CHECKING:
    from lightvm.toolstack import Toolstack


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``save``, ``restore``, ``migrate`` and ``migrate-receive`` to the parser."""
    from lightvm.cli.main import _state_parent

    parent = _state_parent()
    p = subparsers.add_parser(
        "save",
        parents=[parent],
        help="save a VM to a file (then destroy it, unless --keep-running)",
        description="Stop the VM, write its checkpoint (lightvm header + QEMU's migration stream; "
        "format in lightvm/mobility/format.py) to FILE, then destroy the VM unless --keep-running. "
        "On any failure (disk full, QEMU error) no file is left and the VM keeps running.",
    )
    p.add_argument("name", metavar="VM")
    p.add_argument("file", type=Path, metavar="FILE", help="checkpoint file to create (must not exist)")
    p.add_argument("--keep-running", action="store_true", help="resume the VM after saving")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds allowed for the stream")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_save)

    p = subparsers.add_parser(
        "restore",
        parents=[parent],
        help="restore a VM from a checkpoint file",
        description="Start a VM from FILE (made by `lightvm save`): the guest continues where it "
        "was saved (no reboot). Its NoXS page identity (name, uuid, clock) is rewritten. "
        "The file is kept. Through lightvmd (when one runs on the state dir) a prepared "
        "-incoming QEMU of the VM's kind takes the QEMU start off the restore (path: pool).",
    )
    p.add_argument("file", type=Path, metavar="FILE")
    p.add_argument("--name", help="name of the restored VM (default: the saved VM's name)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for the guest")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_restore)

    from lightvm.cli import migrate

    migrate.register(subparsers, parent)


def _toolstack(args: argparse.Namespace) -> Toolstack:
    from lightvm.toolstack import Toolstack

    value = getattr(args, "state_dir", None)
    return Toolstack(Path(value) if value else default_state_dir(), boot_timeout=getattr(args, "timeout", 10.0))


def cmd_save(args: argparse.Namespace) -> int:
    from lightvm.mobility.save import save

    ts = _toolstack(args)
    result = save(ts, args.name, args.file, keep_running=args.keep_running, timeout=args.timeout)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    after = "kept running" if result.kept_running else "destroyed"
    print(
        f"{result.name}: saved to {result.path} ({result.bytes} bytes) in {result.save_ms:.1f} ms "
        f"(stopped {result.downtime_ms:.1f} ms); VM {after}; {result.total_ms:.1f} ms in all"
    )
    return 0


def restore_via_daemon(client: Any, args: argparse.Namespace) -> int:
    """``lightvm restore`` through lightvmd: a prepared -incoming shell when one fits."""
    import time

    t0 = time.perf_counter()
    request = {"file": str(Path(args.file).resolve()), "name": args.name, "timeout": args.timeout}
    result = client.call("restore", request, timeout=args.timeout + 30.0)
    wall = (time.perf_counter() - t0) * 1000
    if args.json:
        print(json.dumps(result))
        return 0
    _print_restore(result, args.file)
    print(f"  path: {result['path']} (lightvmd; request -> reply {wall:.1f} ms at the client)")
    return 0


def _print_restore(result: dict[str, Any], file: Path) -> None:
    state = "paused (it was saved paused)" if result["paused"] else "running"
    print(
        f"{result['name']}: restored from {file} in {result['restore_ms']:.1f} ms "
        f"(stream + resume {result['finish_ms']:.1f} ms), {state}, pid {result['pid']}; "
        f"guest heartbeat {result['heartbeat']}, app counter {result['app_counter']}"
    )


def cmd_restore(args: argparse.Namespace) -> int:
    from lightvm.mobility.restore import restore

    ts = _toolstack(args)
    result = restore(ts, args.file, name=args.name, timeout=args.timeout)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    _print_restore(result.as_dict(), args.file)
    return 0
