"""``lightvm template create`` and ``lightvm clone``: VMs whose RAM is a shared file.

The logic is in lightvm/mobility/template.py and lightvm/mobility/clone.py;
``lightvm restore DIR`` starts one VM from a template (lightvm/cli/checkpoint.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lightvm.cli.backend import toolstack

TEMPLATE = (
    "Make a template from SOURCE (a checkpoint file, or a running VM, which keeps running): a folder DIR "
    "holding the guest's RAM as a file (ram) and its device state (state.lvm, a checkpoint whose stream "
    "leaves the RAM out). VMs started from it (`lightvm restore DIR`, `lightvm clone DIR`) map the RAM "
    "file private: nothing is copied, and they share every page they do not write. A template is refused "
    "when its files were altered or cut, or when this host's QEMU or the VM's kernel/firmware differ from "
    "those it was made with (docs/checkpoint.md)."
)
CLONE = (
    "Start N running copies of SOURCE (a running VM, a checkpoint file or a template folder), all or none. "
    "Each gets its own name (PATTERN: {name} and {i}), uuid, MAC and, with --publish, host port (clone i "
    "gets PORT+i); its NoXS page is rewritten before its guest runs, and the guest re-bases its clock. A "
    "VM or checkpoint is made into a temporary template first, deleted once the clones run (their mappings "
    "keep its pages). Only VMs on user networking can be cloned."
)


def register(subparsers: Any, parent: argparse.ArgumentParser) -> None:
    """Add ``template create`` and ``clone`` to the parser."""
    p = subparsers.add_parser("template", parents=[parent], help="make a template (RAM as a shared file)")
    sub = p.add_subparsers(dest="template_command", metavar="ACTION", required=True)
    c = sub.add_parser("create", parents=[parent], help="make a template from a VM or checkpoint", description=TEMPLATE)
    c.add_argument("source", metavar="SOURCE", help="a checkpoint file, or the name of a running VM")
    c.add_argument("dir", type=Path, metavar="DIR", help="the template folder to create (must not exist)")
    c.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds allowed for each stream")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=cmd_template_create)

    p = subparsers.add_parser("clone", parents=[parent], help="start N copies of a running VM", description=CLONE)
    p.add_argument("source", metavar="SOURCE", help="a running VM's name, a checkpoint file or a template folder")
    p.add_argument("-n", "--count", type=int, default=1, metavar="N", help="how many clones (default 1)")
    p.add_argument("--name", default="{name}-{i}", metavar="PATTERN", help="the clones' names (default {name}-{i})")
    p.add_argument(
        "--publish",
        metavar="[ADDR:]PORT:GUESTPORT[/udp]",
        help="forward host port PORT+i to clone i's GUESTPORT (the source's own forwards are not copied)",
    )
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for each guest")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_clone)


def cmd_template_create(args: argparse.Namespace) -> int:
    from lightvm.mobility.template import create_template

    result = create_template(toolstack(args), args.source, args.dir, timeout=args.timeout)
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(
        f"template {result.path}: RAM {result.ram_bytes >> 10} KiB (a file VMs map private), device state "
        f"{result.state_bytes} bytes; made in {result.build_ms:.1f} ms"
    )
    return 0


def cmd_clone(args: argparse.Namespace) -> int:
    """Through lightvmd when one answers (its prepared shells of a template: no QEMU start)."""
    from lightvm.cli.backend import connect

    client = connect(args)
    if client is None:
        from lightvm.mobility.clone import clone
        from lightvm.mobility.template import remembered_digests

        ts = toolstack(args)
        ts.state.ensure()
        with remembered_digests(ts.state.root):  # the template's files: hashed once per version
            result = clone(ts, args.source, args.count, args.name, args.publish, timeout=args.timeout)
        out = result.as_dict()
    else:
        import os

        source = os.path.realpath(args.source) if os.path.exists(args.source) else args.source
        request = {"source": source, "count": args.count, "name": args.name, "publish": args.publish}
        try:
            out = client.call("clone", {**request, "timeout": args.timeout}, timeout=args.timeout * args.count + 60)
        finally:
            client.close()
    if args.json:
        print(json.dumps(out))
        return 0
    _print_clones(out, client is not None)
    return 0


def _print_clones(result: dict[str, Any], routed: bool) -> None:
    for c in result["clones"]:
        where = f", publish {c['publish']}" if c["publish"] else ""
        print(f"{c['name']}: running, pid {c['pid']}, mac {c['mac']}{where}")
    made = f"template {result['template_ms']:.1f} ms + " if result["template_ms"] else ""
    n, total, clones = len(result["clones"]), result["total_ms"], result["clone_ms"]
    print(f"{n} clones of {result['source']} in {total:.1f} ms ({made}clones {clones:.1f} ms)")
    if routed:
        print(f"  path: lightvmd, {result['pool_hits']} of {n} from prepared shells of the template")
