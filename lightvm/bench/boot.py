"""``lightvm bench boot``: time to READY of the Nth instance while N-1 run (paper Fig. 9).

One table row per (variant, N). Only one variant's fleet lives at a time: before a
row of another variant the previous fleet is torn down (variants never share the
host). Each row grows its fleet to N-1 running instances, then every iteration
starts one more, times it to ready and removes it. The lightvm rows also record the
boot breakdown per point (QEMU up, vCPU resumed, guest entry, devices up, READY).

Order (``--order``): by default every variant is measured at one N before the next
N (``n``): the variants of a point are minutes apart at most, so a change of the
host's load between them moves them alike instead of moving their ratio. Each fleet
is then rebuilt for each N (sum of the Ns instead of the largest: 1.1x for
1,10,100,1000). ``variant`` runs one variant through all its Ns first, as before.
After each row's set-up (a teardown, a new fleet, its growth) the suite waits
``settle_s`` (1 s) before it times anything: the kernel goes on freeing a thousand
QEMUs after the last kill returns, and new daemons and VMs finish starting.

The variant table is :data:`VARIANTS` (what each variant times: README.md beside this
file; lightvm-xenstore: xenstore/README.md). Only what exists is in it. A variant is
one :class:`Variant` entry whose factory returns a fleet (grow/measure/close, see
:mod:`lightvm.bench.fleets`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.bench import crun, forkexec, libvirtd
from lightvm.bench.fleets import Fleet, LightvmColdFleet, guest_spec
from lightvm.bench.runner import Benchmark, Result
from lightvm.bench.suite import ORDERS, SuiteOptions
from lightvm.bench.xenstore import store
from lightvm.boot import BOOT_STEP_KEYS
from lightvm.errors import LightVMError


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # "lightvm" or "baseline"
    factory: Callable[[SuiteOptions], Fleet]
    available: Callable[[], str | None]
    doc: str


def _lightvm_cold(opts: SuiteOptions) -> Fleet:
    return LightvmColdFleet(guest_spec(opts.app), opts.accel)


def _lightvm_split(opts: SuiteOptions) -> Fleet:
    from lightvm.bench.split import SplitFleet

    return SplitFleet(app=opts.app, accel=opts.accel)


def _lightvm_xenstore(opts: SuiteOptions) -> Fleet:
    from lightvm.bench.xenstore.fleet import StoreFleet

    return StoreFleet(guest_spec(opts.app), opts.accel)


def _libvirt(opts: SuiteOptions) -> Fleet:
    from lightvm.bench.libvirt_fleet import LibvirtFleet

    return LibvirtFleet(guest_spec(opts.app), opts.accel)


def _crun(opts: SuiteOptions) -> Fleet:
    return crun.CrunFleet()


def _fork_exec(opts: SuiteOptions) -> Fleet:
    return forkexec.ForkExecFleet()


VARIANTS: tuple[Variant, ...] = (
    Variant("lightvm-cold", "lightvm", _lightvm_cold, lambda: None, "Toolstack.create, cold path (NoXS, no pool)"),
    Variant("lightvm-split", "lightvm", _lightvm_split, lambda: None, "lightvmd request -> READY reply, pool shell"),
    Variant(
        "lightvm-xenstore",
        "baseline",
        _lightvm_xenstore,
        store.available,
        "cold path + Debian's xenstored as the control plane (xl-style config, guest reads it, vif handshake)",
    ),
    Variant("libvirt", "baseline", _libvirt, libvirtd.available, "private libvirtd, virDomainCreateXML, same guest"),
    Variant("crun", "baseline", _crun, crun.available, "crun run of a busybox OCI bundle, to its first output byte"),
    Variant(
        "fork-exec", "baseline", _fork_exec, forkexec.available, "posix_spawn of a static binary, to its ready byte"
    ),
)
BASELINES = tuple(v.name for v in VARIANTS if v.kind == "baseline")
REFERENCE = "lightvm-cold"  # ratios in the summary are against this variant


class _Current:
    """The one fleet alive at a time; switching variants tears the previous one down."""

    def __init__(self, opts: SuiteOptions) -> None:
        self.opts = opts
        self.variant: Variant | None = None
        self.fleet: Fleet | None = None

    def get(self, variant: Variant) -> Fleet:
        if self.variant is not variant or self.fleet is None:
            self.close()
            why = variant.available()
            if why:
                raise LightVMError(f"{variant.name}: {why}")
            self.variant = variant
            self.fleet = variant.factory(self.opts)
        return self.fleet

    def close(self) -> None:
        fleet, self.fleet, self.variant = self.fleet, None, None
        if fleet is not None:
            fleet.close()


def benchmarks(opts: SuiteOptions, stack: contextlib.ExitStack) -> list[Benchmark]:
    """The rows for the selected variants, in ``opts.order`` (see the module docstring)."""
    if opts.order not in ORDERS:
        raise LightVMError(f"--order {opts.order!r}: one of {', '.join(ORDERS)}")
    current = _Current(opts)
    stack.callback(current.close)
    selected = [v for v in VARIANTS if v.kind != "baseline" or v.name in opts.baselines]
    points = sorted(set(opts.vms))
    if opts.order == "n":
        pairs = [(v, n) for n in points for v in selected]
    else:
        pairs = [(v, n) for v in selected for n in points]
    rows = []
    for variant, n in pairs:

        def before(variant: Variant = variant, n: int = n) -> None:
            current.get(variant).grow(n - 1)
            time.sleep(opts.settle_s)

        def measure(variant: Variant = variant) -> dict[str, float]:
            return current.get(variant).measure()

        rows.append(
            Benchmark(
                name=f"boot/{variant.name}/n={n}",
                fn=measure,
                warmup=opts.warmup,
                iterations=opts.iterations,
                params={"variant": variant.name, "n": n, "kind": variant.kind},
                metric="ms",
                unit="ms",
                before=before,
            )
        )
    return rows


def describe() -> dict[str, Any]:
    """What each variant is, for the results file (so a reader knows what was compared)."""
    return {
        "variants": {v.name: {"kind": v.kind, "doc": v.doc} for v in VARIANTS},
        "not_implemented": [
            "lightvm-xenstore: the guest writing its ring page itself (its bytes cross COM2 and a host relay)"
        ],
        "reference": REFERENCE,
        "boot_steps": list(BOOT_STEP_KEYS),
    }


def plot(results: list[Result], outdir: Path, subtitle: str = "") -> list[Path]:
    from lightvm.bench import plots

    return [
        *plots.lines(
            results, outdir / "boot", title="Time to ready of the Nth instance while N-1 run",
            ylabel="time to ready (ms, log)", logy=True, subtitle=subtitle,
        ),
        *plots.breakdown(results, outdir / "boot-breakdown", variant=REFERENCE, steps=BOOT_STEP_KEYS),
        # the store variant's steps count from the start of its host store traffic (xenstore/fleet.py)
        *plots.breakdown(
            results,
            outdir / "boot-breakdown-xenstore",
            variant="lightvm-xenstore",
            steps=("store_ms", *BOOT_STEP_KEYS),
        ),
    ]  # fmt: skip


__all__ = ["BASELINES", "REFERENCE", "VARIANTS", "Variant", "benchmarks", "describe", "plot"]
