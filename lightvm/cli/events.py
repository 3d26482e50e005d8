"""``lightvm events [VM] [--json] [--no-follow] [--since N]``: what lightvmd saw happen.

Created, READY, paused, resumed, shutdown, destroyed, restored, cloned, migrated (away and in),
crashed (QEMU died without being asked, with its exit status) and powered-off: the
daemon's event log (lightvm/daemon/events.py). Served by lightvmd only: a one-shot
lightvm has no process that outlives a command to watch VMs from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

IDLE_READ_S = 30.0  # a quiet stream is read again; the daemon ends it with {"end": true}


def register(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "events",
        parents=[parent],
        help="what happened to the VMs, as lightvmd saw it (follows new events)",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    p.add_argument("vm", nargs="?", metavar="VM", help="only this VM's events")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--no-follow", action="store_true", help="print the past events and exit")
    p.add_argument("--since", type=int, default=0, metavar="SEQ", help="only events numbered after SEQ")
    p.set_defaults(func=cmd_events)


def _line(event: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(event["time"])) + f".{int(event['time'] % 1 * 1000):03d}Z"
    extra = " ".join(f"{k}={v}" for k, v in event.items() if k not in ("seq", "time", "event", "vm"))
    return f"{when}  {event['event']:<12} {event['vm']}{'  ' + extra if extra else ''}"


def _print(event: dict[str, Any], as_json: bool) -> None:
    print(json.dumps(event) if as_json else _line(event), flush=True)


def cmd_events(args: argparse.Namespace) -> int:
    from lightvm.cli.backend import state_root
    from lightvm.daemon import proto
    from lightvm.errors import StateError

    root = state_root(args)
    try:
        client = proto.Client.connect(root, timeout=2.0)
    except proto.DaemonUnavailable as exc:
        raise StateError(f"lightvm events needs lightvmd: {exc} (start one: lightvm daemon start)") from None
    with client:
        request = {"since": args.since, "vm": args.vm, "follow": not args.no_follow}
        result = client.call("events", request, timeout=10.0)
        backlog = result if args.no_follow else result["events"]
        for event in backlog:
            _print(event, args.json)
        if args.no_follow:
            return 0
        while True:
            line = client.next_line(IDLE_READ_S)
            if line is None:
                continue
            event = json.loads(line)
            if event.get("end"):
                print("lightvm: lightvmd stopped; no more events", file=sys.stderr)
                return 0
            _print(event, args.json)
