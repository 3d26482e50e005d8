"""Daytime with a NIC through lightvmd: the pool path next to the cold path, in one run.

A lightvmd (:class:`lightvm.bench.split.SplitFleet`) with a pool of daytime shells that
have a NIC (lightvm/devices/shellnet.py), a network ``bn`` whose bridge and taps live in
a network namespace of the run's own (LIGHTVM_NETNS: the host's links are not touched),
and alternating samples: one create from the pool (``path: pool``), one with
``"pool": false`` (the cold path, in the same daemon: no process start), each timed at
the client from the request to the READY reply and destroyed after. The pool is full and
quiet before each pool sample (untimed). Needs root (taps) and ``ip`` (the namespace)::

    python -m lightvm.bench.splitnic --iterations 30 [--out r.json]

``--net user``: the same with QEMU user networking, each create publishing its port 13
on a free local port (the pool path adds the forward over QMP at execute); no root.

``lightvm bench splitnic [--net tap|user] [--disk] [--iterations N] [--warmup N] [--out
DIR]`` runs the same and writes DIR/results.json (with the run's metadata) and
summary.txt.

``--disk``: a VM with a disk instead of a NIC (images/apps/disk.c, READY after it read
its first and last sectors), its image put under the shell's device at execute
(lightvm/devices/shellblk.py); no root.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightvm.bench.fleets import network_setup
from lightvm.bench.ports import free_port
from lightvm.bench.runner import REPO
from lightvm.bench.split import SplitFleet
from lightvm.daemon import api
from lightvm.devices.netns import netns_path, thread_inside
from lightvm.errors import LightVMError

SUBNET = "10.213.41.0/24"
IP_TIMEOUT = 10.0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=IP_TIMEOUT)


def _config(folder: Path, user: bool, disk: bool = False) -> Path:
    images = REPO / "images" / "build"
    if disk:
        image = folder / "disk.img"
        image.write_bytes(os.urandom(256 * 512))
        path = folder / "disk.toml"
        path.write_text(
            f'name = "disk"\nkernel = "{images / "disk.elf"}"\nfirmware = "{images / "lvfw.bin"}"\n'
            f'memory = "4M"\nvcpus = 1\n[[disks]]\npath = "{image}"\nreadonly = true\n'
        )
        return path
    path = folder / "daytime-net.toml"
    path.write_text(
        f'name = "daytime"\nkernel = "{images / "daytime.elf"}"\nfirmware = "{images / "lvfw.bin"}"\n'
        'memory = "4M"\nvcpus = 1\n[[vifs]]\n' + ("" if user else 'network = "bn"\n')
    )
    return path


def _client_socket(netns: str | None) -> socket.socket:
    """A TCP socket in ``netns`` (a socket keeps the namespace it was made in), made
    before the sample's clock starts."""
    if netns is None:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    made: list[socket.socket] = []
    nsfd = os.open(str(netns_path(netns)), os.O_RDONLY | os.O_CLOEXEC)
    try:

        def inside() -> None:
            with thread_inside(nsfd):
                made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))

        thread = threading.Thread(target=inside, daemon=True)
        thread.start()
        thread.join(IP_TIMEOUT)
    finally:
        os.close(nsfd)
    if not made:
        raise LightVMError(f"could not make a socket in network namespace {netns}")
    return made[0]


def _daytime_line(
    sock: socket.socket, addr: tuple[str, int], deadline: float, fresh: Callable[[], socket.socket]
) -> bytes:
    """Connect to ``addr`` and read the daytime line (to the server's FIN), retrying a
    refused or reset connection (a published port's forward answers before the guest
    listens) until ``deadline``: what `nc IP 13` does, from the same process."""
    while True:
        sock.settimeout(max(0.05, deadline - time.perf_counter()))
        try:
            sock.connect(addr)
            got = b""
            while chunk := sock.recv(256):
                got += chunk
            if got:
                return got
        except (ConnectionRefusedError, ConnectionResetError):
            pass
        if time.perf_counter() > deadline:
            raise LightVMError(f"daytime at {addr[0]}:{addr[1]} did not answer")
        sock.close()
        sock = fresh()  # one socket per attempt, made where the first one was


def _sample(fleet: SplitFleet, name: str, pool: bool, user: bool = False, netns: str | None = None) -> dict[str, Any]:
    """One create (``pool`` or cold), timed at the client from the request to the READY
    reply and, for daytime, to the daytime line read from the VM over TCP (through its
    published port for user networking, from the network's namespace for taps)."""
    if pool:
        fleet._wait_pool_full()  # untimed: a full, quiet pool (no QEMU start competing)
    where = None if user else netns
    sock = _client_socket(where) if (user or netns) else None
    with api.Client.connect(fleet.state, timeout=5.0) as client:
        client.call("ping")  # the connection served before the sample (as SplitFleet.measure)
        args: dict[str, Any] = {"config": str(fleet.config), "name": name, "accel": fleet.accel, "pool": pool}
        port = free_port() if user else 13
        if user:
            args["publish"] = [f"127.0.0.1:{port}:13"]
        t0 = time.perf_counter()
        (result,) = client.call("create", args, timeout=60.0)
        wall = (time.perf_counter() - t0) * 1000
        answer = None
        if sock is not None:
            found = re.search(r"vif0: ([0-9.]+)/", result.get("network") or "")
            if not found:
                raise LightVMError(f"no vif0 address in the create's reply: {result.get('network')!r}")
            try:
                line = _daytime_line(
                    sock, ("127.0.0.1" if user else found.group(1), port), t0 + 5.0, lambda: _client_socket(where)
                )
            finally:
                sock.close()
            answer = (time.perf_counter() - t0) * 1000
            if b"UTC" not in line:
                raise LightVMError(f"daytime answered {line!r}")
    fleet.call("destroy", {"names": [name]})
    boot = result["boot_ms"]
    return {
        "ms": wall,
        "answer_ms": answer,
        "path": result["path"],
        "resumed": boot.get("resumed"),
        "ready": boot.get("ready"),
        "devices_up": boot.get("devices_up"),
        "net": result.get("network") or f"app {result.get('app', '')}",
    }


def run(iterations: int, warmup: int, user: bool = False, disk: bool = False) -> dict[str, Any]:
    netns = f"lvbn-{uuid.uuid4().hex[:8]}"
    rootless = user or disk
    if not rootless:
        _ip("netns", "add", netns)
    folder = tempfile.TemporaryDirectory(prefix="lightvm-bench-splitnic-")
    fleet: SplitFleet | None = None
    try:
        if rootless:
            config = _config(Path(folder.name), user, disk)
            fleet = SplitFleet(config=config, env={"LIGHTVM_NET_MODE": "user"})
        else:
            _ip("-n", netns, "link", "set", "lo", "up")
            env = {"LIGHTVM_NETNS": netns, "LIGHTVM_NET_MODE": "tap"}
            fleet = SplitFleet(
                config=_config(Path(folder.name), user), env=env, before_daemon=network_setup("bn", SUBNET)
            )
        samples: dict[str, list[dict[str, Any]]] = {"pool": [], "cold": []}
        for i in range(warmup + iterations):
            for path in ("pool", "cold") if i % 2 == 0 else ("cold", "pool"):  # alternate who goes first
                s = _sample(fleet, f"{path}{i}", pool=path == "pool", user=user, netns=None if rootless else netns)
                if s["path"] != path:
                    raise LightVMError(f"a {path} sample took the {s['path']} path: {s}")
                if i >= warmup:
                    samples[path].append(s)
        out: dict[str, Any] = {
            "accel": "tcg",
            "net": "user" if user else "none" if disk else "tap",
            "device": "disk" if disk else "vif",
            "iterations": iterations,
            "loadavg": os.getloadavg(),
        }
        for path, got in samples.items():
            ms = [s["ms"] for s in got]
            ready = [s["ready"] for s in got if s["ready"] is not None]
            devices = [s["devices_up"] for s in got if s["devices_up"] is not None]
            resumed = [s["resumed"] for s in got if s["resumed"] is not None]
            answers = [s["answer_ms"] for s in got if s["answer_ms"] is not None]
            out[path] = {
                "median_ms": statistics.median(ms),
                "min_ms": min(ms),
                "max_ms": max(ms),
                "ready_median_ms": statistics.median(ready) if ready else None,
                "devices_up_median_ms": statistics.median(devices) if devices else None,
                "woken_median_ms": statistics.median(resumed) if resumed else None,
                "answer_median_ms": statistics.median(answers) if answers else None,
                "answer_max_ms": max(answers) if answers else None,
                "samples_ms": ms,
                "example_network": got[0]["net"],
            }
        return out
    finally:
        if fleet is not None:
            fleet.close()
        folder.cleanup()
        if not rootless:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=IP_TIMEOUT, check=False)


def report(result: dict[str, Any]) -> str:
    """The run's summary: per path the client's medians, the daemon's breakdown, when the
    guest was woken and when the daytime line was read."""
    pool, cold = result["pool"], result["cold"]
    what = (
        "the disk app with a read-only disk" if result["device"] == "disk" else f"daytime with a NIC ({result['net']})"
    )
    lines = [f"{what}, request -> READY reply at the client (TCG, N={result['iterations']} each, alternating):"]
    for path, got in (("pool", pool), ("cold", cold)):
        lines.append(
            f"  {path}: median {got['median_ms']:.2f} ms (min {got['min_ms']:.2f}, max {got['max_ms']:.2f}); "
            f"guest devices up {got['devices_up_median_ms']:.2f}, READY {got['ready_median_ms']:.2f} ms"
        )
    for path, got in (("pool", pool), ("cold", cold)):
        if got["woken_median_ms"] is not None:
            lines.append(
                f"  {path}: guest woken (bell / cont) {got['woken_median_ms']:.2f} ms after the request (daemon)"
            )
        if got["answer_median_ms"] is not None:
            lines.append(
                f"  {path}: daytime line read over TCP {got['answer_median_ms']:.2f} ms after the request "
                f"(max {got['answer_max_ms']:.2f})"
            )
    lines.append(f"  cold / pool: {cold['median_ms'] / pool['median_ms']:.1f}x; load {result['loadavg'][0]:.1f}")
    lines.append(f"  e.g. {pool['example_network']}")
    return "\n".join(lines)


def write(result: dict[str, Any], meta: dict[str, Any], out: Path) -> Path:
    """``out``/results.json (``meta`` and the run) and ``out``/summary.txt (:func:`report`)."""
    from lightvm.bench.runner import write_run

    return write_run(out, meta, result, report(result))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lightvm.bench.splitnic", description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--net", choices=("tap", "user"), default="tap", help="the vif's networking (default tap)")
    p.add_argument("--disk", action="store_true", help="a VM with a read-only disk instead of a NIC")
    p.add_argument("--out", type=Path, help="write the JSON results here")
    args = p.parse_args(argv)
    result = run(args.iterations, args.warmup, user=args.net == "user", disk=args.disk)
    print(report(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
