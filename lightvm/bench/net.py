"""``lightvm bench net``: per-VM network setup time for the Nth VM while N-1 have theirs.

Built on H4's :mod:`lightvm.bench.netsetup` (its private network namespace and the
same calls it times), as fleets so the table has the boot suite's shape:

* ``tap``          ``Devd.create_tap`` (create, MTU, alias, attach to the bridge, up)
* ``vif-prepare``  ``devices.net.prepare`` of a network vif (locked, fsynced lease + tap)

Both run in a fresh network namespace that is removed (with every tap in it)
at the end, so the host's interfaces are untouched. Needs root (CAP_NET_ADMIN).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from lightvm.bench.runner import Benchmark, Result, Sample
from lightvm.bench.suite import SuiteOptions
from lightvm.errors import LightVMError

REFERENCE = "tap"
MTU = 1500


class _TapFleet:
    variant = "tap"

    def __init__(self) -> None:
        from lightvm.bench import netsetup
        from lightvm.devices.devd import Devd, bridge_alias

        self._stack = contextlib.ExitStack()
        try:
            ns = self._stack.enter_context(netsetup.private_netns())
            self.devd = self._stack.enter_context(Devd(netns=ns))
            self.devd.ensure_bridge("lvbench", MTU, bridge_alias("bench"))
        except BaseException:
            self._stack.close()
            raise
        self.count = 0
        self.seq = 0

    def _create(self, index: int) -> str:
        from lightvm.devices import net
        from lightvm.devices.devd import tap_alias

        name = net.tap_name("bench", index % 1000, attempt=index // 1000)
        self.devd.create_tap(name, MTU, "lvbench", alias=tap_alias("bench", index))
        return name

    def grow(self, count: int) -> None:
        while self.count < count:
            self._create(self.count)
            self.count += 1

    def measure(self) -> Sample:
        self.seq += 1
        t0 = time.perf_counter()
        name = self._create(100_000 + self.seq)  # beyond the fleet's indices
        ms = (time.perf_counter() - t0) * 1000
        self.devd.delete_tap(name)
        return {"ms": ms}

    def close(self) -> None:
        self._stack.close()


class _VifFleet:
    variant = "vif-prepare"

    def __init__(self) -> None:
        from lightvm.bench import netsetup
        from lightvm.devices import net

        self._stack = contextlib.ExitStack()
        try:
            ns = self._stack.enter_context(netsetup.private_netns())
            state = self._stack.enter_context(tempfile.TemporaryDirectory(prefix="lightvm-bench-net-"))
            self.ctx = self._stack.enter_context(net.NetContext.open(state, "tap", ns))
            self.ctx.store().create("bench", "10.200.0.0/16")
        except BaseException:
            self._stack.close()
            raise
        self.spec = net.validate({"network": "bench"})
        self.count = 0
        self.seq = 0

    def _prepare(self, vm: str) -> tuple[Any, Any]:
        from lightvm.devices import net
        from lightvm.undo import UndoStack

        undo = UndoStack()
        prepared = net.prepare(self.spec, vm, 0, self.ctx, undo)
        undo.commit()
        return prepared, undo

    def grow(self, count: int) -> None:
        while self.count < count:
            self._prepare(f"bg-{self.count}")
            self.count += 1

    def measure(self) -> Sample:
        from lightvm.devices import net

        self.seq += 1
        vm = f"m-{self.seq}"
        t0 = time.perf_counter()
        prepared, _ = self._prepare(vm)
        ms = (time.perf_counter() - t0) * 1000
        net.release(prepared, vm, self.ctx)
        return {"ms": ms}

    def close(self) -> None:
        self._stack.close()


FLEETS: dict[str, type[_TapFleet] | type[_VifFleet]] = {"tap": _TapFleet, "vif-prepare": _VifFleet}


def available() -> str | None:
    return None if os.geteuid() == 0 else "needs root (CAP_NET_ADMIN) for network namespaces and taps"


def benchmarks(opts: SuiteOptions, stack: contextlib.ExitStack) -> list[Benchmark]:
    current: dict[str, Any] = {}

    def get(variant: str) -> Any:
        if current.get("variant") != variant:
            close()
            why = available()
            if why:
                raise LightVMError(f"net: {why}")
            current["fleet"] = FLEETS[variant]()
            current["variant"] = variant
        return current["fleet"]

    def close() -> None:
        fleet = current.pop("fleet", None)
        current.pop("variant", None)
        if fleet is not None:
            fleet.close()

    stack.callback(close)

    def row(variant: str, n: int) -> Benchmark:
        def measure() -> Sample:
            sample: Sample = get(variant).measure()
            return sample

        def before() -> None:
            get(variant).grow(n - 1)

        return Benchmark(
            f"net/{variant}/n={n}", measure, warmup=opts.warmup, iterations=opts.iterations,
            params={"variant": variant, "n": n}, before=before,
        )  # fmt: skip

    return [row(variant, n) for variant in FLEETS for n in sorted(set(opts.vms))]


def describe() -> dict[str, Any]:
    return {
        "variants": {
            "tap": {"kind": "lightvm", "doc": "Devd.create_tap: tap create + MTU + alias + attach + up"},
            "vif-prepare": {"kind": "lightvm", "doc": "devices.net.prepare: network lease (locked, fsynced) + tap"},
        },
        "reference": REFERENCE,
    }


def plot(results: list[Result], outdir: Path, subtitle: str = "") -> list[Path]:
    from lightvm.bench import plots

    title = "Network setup of the Nth VM while N-1 have theirs"
    return plots.lines(results, outdir / "net", title, "ms", subtitle=subtitle)


__all__ = ["REFERENCE", "benchmarks", "describe", "plot"]
