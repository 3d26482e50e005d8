"""What every suite module shares: its options, and the suite registry.

A suite module provides ``benchmarks(opts, stack) -> list[Benchmark]`` (its
table; fleets it starts are registered on ``stack`` so they are torn down
whatever happens), ``plot(results, outdir, subtitle) -> list[Path]`` and ``describe()``
(what was compared, for the results file), and ``REFERENCE``: the variant
ratios are quoted against.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

SUITES = ("boot", "density", "net", "checkpoint", "split", "tinyx", "cli", "template", "qmp")
# a suite whose module is not lightvm.bench.<name> (lightvm.bench.cli is the bench command)
MODULES = {"cli": "clistart"}
ORDERS = ("n", "variant")


@dataclass
class SuiteOptions:
    vms: list[int] = field(default_factory=lambda: [1, 10, 100])
    iterations: int = 10
    warmup: int = 1
    accel: str = "tcg"  # resolved (kvm or tcg), never "auto"
    baselines: tuple[str, ...] = ("fork-exec", "crun", "libvirt", "lightvm-xenstore")
    app: str = "noop"  # the example guest the VM variants boot
    memory_mib: int | None = None  # checkpoint: the guest's RAM instead of the example's
    idle_window_s: float = 10.0  # density: how long idle CPU is integrated
    # boot: "n" measures every variant at one N before the next N (each variant's fleet is
    # rebuilt to N-1 for it), so a change of the host's load moves all variants of a point
    # alike; "variant" runs one variant through every N, then the next (cheaper: each fleet
    # grows once, but the ratios then compare moments minutes apart).
    order: str = "n"
    settle_s: float = 1.0  # boot: pause after a fleet is grown or torn down, before timing
    # run a row's iterations again (twice at most) while the hypervisor stole more than this
    # share of the CPUs (runner.run); None: never
    max_steal_pct: float | None = None
    # tinyx: measured iterations and warm-ups of the stock Debian VM's rows (a boot is
    # tens of seconds under TCG); None: the suite's default (lightvm/bench/tinyx.py)
    stock_iterations: int | None = None
    stock_warmup: int = 1


def load(name: str) -> ModuleType:
    """The suite module ``lightvm.bench.<name>``. :raise ValueError: unknown suite."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; one of {', '.join(SUITES)}")
    return importlib.import_module(f"lightvm.bench.{MODULES.get(name, name)}")


__all__ = ["ORDERS", "SUITES", "SuiteOptions", "load"]
