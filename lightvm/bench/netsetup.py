"""Micro-benchmarks of per-VM network setup, each in a private network namespace.

``measure_tap_setup`` times what devd does for one vif on the VM-creation
path: create a persistent tap, set its MTU and alias, attach it to the bridge,
bring it up (one ``Devd.create_tap`` call). ``measure_vif_prepare`` adds the
network's allocator (a locked, fsynced lease) and the vif module around it.
Both return one duration in milliseconds per iteration; the ``lightvm bench
net`` suite records them. Run directly: ``python -m lightvm.bench.netsetup [N]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pyroute2 import config as pyroute2_config
from pyroute2 import netns

from lightvm.devices import net
from lightvm.devices.devd import Devd, bridge_alias, tap_alias
from lightvm.undo import UndoStack


@contextmanager
def private_netns(prefix: str = "lvbench") -> Iterator[str]:
    """A fresh network namespace, removed (with everything in it) on exit."""
    # pyroute2 makes the namespace in a forked helper that it stops with SIGTERM:
    # the helper must die then, not run a SIGTERM handler of ours (cli.main has one).
    pyroute2_config.disable_mp_signal = True
    name = f"{prefix}-{os.getpid()}-{time.monotonic_ns() % 1_000_000}"
    netns.create(name)
    try:
        yield name
    finally:
        netns.remove(name)


def measure_tap_setup(iterations: int = 200, mtu: int = 1500) -> list[float]:
    """Milliseconds per tap create + MTU + attach + up, in a private namespace.

    All taps stay until the end (as with running VMs), then everything goes
    with the namespace.
    """
    samples: list[float] = []
    with private_netns() as ns, Devd(netns=ns) as devd:
        devd.ensure_bridge("lvbench", mtu, bridge_alias("bench"))
        for i in range(iterations):
            name = net.tap_name("bench", i % 1000, attempt=i // 1000)
            start = time.perf_counter()
            devd.create_tap(name, mtu, "lvbench", alias=tap_alias("bench", i))
            samples.append((time.perf_counter() - start) * 1000.0)
    return samples


def measure_vif_prepare(iterations: int = 200) -> list[float]:
    """Milliseconds per ``devices.net.prepare`` of a network vif (lease + tap), in a private namespace."""
    samples: list[float] = []
    with private_netns() as ns, tempfile.TemporaryDirectory() as state, net.NetContext.open(state, "tap", ns) as ctx:
        ctx.store().create("bench", "10.200.0.0/16")
        spec = net.validate({"network": "bench"})
        for i in range(iterations):
            undo = UndoStack()
            start = time.perf_counter()
            net.prepare(spec, f"bench-{i}", 0, ctx, undo)
            samples.append((time.perf_counter() - start) * 1000.0)
            undo.commit()
    return samples


def _report(label: str, samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=20)
    return (
        f"{label}: n={len(samples)} median {statistics.median(samples):.3f} ms  "
        f"p5 {q[0]:.3f}  p95 {q[-1]:.3f}  min {min(samples):.3f}  max {max(samples):.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    iterations = int(args[0]) if args else 200
    print(_report("tap create+attach+up", measure_tap_setup(iterations)))
    print(_report("vif prepare (lease+tap)", measure_vif_prepare(iterations)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
