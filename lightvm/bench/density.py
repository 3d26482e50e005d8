"""``lightvm bench density``: host memory and idle CPU per instance at N running (Figs. 14-15).

The variants are the boot suite's (lightvm cold, and the selected baselines:
libvirt, crun, fork/exec), one fleet at a time. For each N (ascending) the
fleet grows to N idle instances, then two rows measure it:

* ``density/VARIANT/memory/n=N``: per instance, the proportional set size of
  its processes (``Pss`` in /proc/PID/smaps_rollup: private pages plus a fair
  share of shared libraries and of the guest's memfd RAM), plus lightvm's NoXS
  files; a daemon the variant needs (libvirtd) is counted and shared by the N.
  Also RSS, and the drop of the host's MemAvailable since before the fleet,
  divided by N (catches memory outside the processes; noisy on a shared host).
* ``density/VARIANT/cpu/n=N``: per instance, % of one CPU the idle fleet burns,
  from utime+stime of those processes (all threads) over a window (10 s).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightvm.bench.fleets import Fleet, LightvmColdFleet
from lightvm.bench.procfs import cpu_ticks, mem_available_kib, smaps_rollup
from lightvm.bench.runner import Benchmark, Result, Sample
from lightvm.bench.suite import SuiteOptions
from lightvm.errors import LightVMError
from lightvm.state import SHM_PREFIX, shm_dir

if TYPE_CHECKING:
    from lightvm.bench.boot import Variant

REFERENCE = "lightvm-cold"
SETTLE_S = 1.0  # let the newest VMs finish their boot before sampling


class _Density:
    """The one fleet alive at a time (variants never share the host), and its measurements."""

    def __init__(self, opts: SuiteOptions) -> None:
        self.opts = opts
        self.variant: Variant | None = None
        self.fleet: Fleet | None = None
        self.baseline_avail_kib = 0

    def grow(self, variant: Variant, n: int) -> None:
        if self.variant is not variant or self.fleet is None:
            self.close()
            why = variant.available()
            if why:
                raise LightVMError(f"{variant.name}: {why}")
            time.sleep(SETTLE_S)  # the previous fleet's memory is given back
            self.baseline_avail_kib = mem_available_kib()
            self.variant, self.fleet = variant, variant.factory(self.opts)
        self.fleet.grow(n)
        time.sleep(SETTLE_S)

    def _pids(self, n: int) -> list[int]:
        if self.fleet is None:
            raise LightVMError("density: no fleet (its set-up failed)")
        pids = self.fleet.pids()
        if len(pids) < n:
            raise LightVMError(f"density: {n} instances wanted but only {len(pids)} processes found")
        return pids

    def memory(self, n: int) -> Sample:
        pss = rss = 0
        for pid in self._pids(n):
            rollup = smaps_rollup(pid)
            pss += rollup.get("Pss", 0)
            rss += rollup.get("Rss", 0)
        extra = self._noxs_bytes() if isinstance(self.fleet, LightvmColdFleet) else 0
        host = self.baseline_avail_kib - mem_available_kib()
        return {
            "pss_mib_per_vm": (pss * 1024 + extra) / n / 2**20,
            "rss_mib_per_vm": rss / n / 1024,
            "host_mib_per_vm": host / n / 1024,
        }

    def _noxs_bytes(self) -> int:
        assert isinstance(self.fleet, LightvmColdFleet)
        # The toolstack names a VM's NoXS file after its id; count this fleet's only.
        ids = {info.id for info in self.fleet.ts.list() if info.id}
        return sum(p.stat().st_size for p in shm_dir().glob(f"{SHM_PREFIX}*") if p.name.split("-", 1)[1] in ids)

    def cpu(self, n: int) -> Sample:
        pids = self._pids(n)
        hz = os.sysconf("SC_CLK_TCK")
        t0 = time.monotonic()
        before = sum(cpu_ticks(p) for p in pids)
        time.sleep(self.opts.idle_window_s)
        after = sum(cpu_ticks(p) for p in pids)
        elapsed = time.monotonic() - t0
        total_pct = (after - before) / hz / elapsed * 100
        return {"cpu_pct_per_vm": total_pct / n, "cpu_pct_total": total_pct}

    def close(self) -> None:
        fleet, self.fleet, self.variant = self.fleet, None, None
        if fleet is not None:
            fleet.close()


def benchmarks(opts: SuiteOptions, stack: contextlib.ExitStack) -> list[Benchmark]:
    from lightvm.bench.boot import VARIANTS

    state = _Density(opts)
    stack.callback(state.close)
    iterations = max(1, min(opts.iterations, 3))

    def rows(variant: Variant, n: int) -> list[Benchmark]:
        def before() -> None:
            state.grow(variant, n)

        def memory() -> Sample:
            return state.memory(n)

        def cpu() -> Sample:
            return state.cpu(n)

        params: dict[str, Any] = {"variant": variant.name, "n": n, "kind": variant.kind}
        return [
            Benchmark(
                f"density/{variant.name}/memory/n={n}", memory, warmup=0, iterations=iterations,
                params={**params, "measure": "memory"}, metric="pss_mib_per_vm", unit="MiB", before=before,
            ),
            Benchmark(
                f"density/{variant.name}/cpu/n={n}", cpu, warmup=0, iterations=iterations,
                params={**params, "measure": "cpu"}, metric="cpu_pct_per_vm", unit="%",
            ),
        ]  # fmt: skip

    selected = [v for v in VARIANTS if v.kind != "baseline" or v.name in opts.baselines]
    return [row for v in selected for n in sorted(set(opts.vms)) for row in rows(v, n)]


def describe() -> dict[str, Any]:
    from lightvm.bench.boot import VARIANTS

    return {
        "variants": {v.name: {"kind": v.kind, "doc": v.doc} for v in VARIANTS},
        "processes": {
            "lightvm-cold": "each VM's QEMU (no daemon: lightvm has none)",
            "libvirt": "each domain's QEMU, plus libvirtd (its cost is shared by the N VMs)",
            "crun": "each container's process (crun leaves no monitor process)",
            "fork-exec": "each process",
        },
        "metrics": {
            "pss_mib_per_vm": "sum of QEMU Pss (smaps_rollup) + NoXS files, / N",
            "rss_mib_per_vm": "sum of QEMU Rss / N (shared pages counted in every VM)",
            "host_mib_per_vm": "drop of MemAvailable since before the first VM, / N (noisy: other tenants)",
            "cpu_pct_per_vm": "utime+stime of all QEMUs over the idle window, % of one CPU, / N",
        },
    }


def plot(results: list[Result], outdir: Path, subtitle: str = "") -> list[Path]:
    from lightvm.bench import plots

    memory = [r for r in results if r.params.get("measure") == "memory"]
    cpu = [r for r in results if r.params.get("measure") == "cpu"]
    return [
        *plots.lines(
            memory,
            outdir / "density-memory",
            "Host memory per instance (PSS)",
            "MiB per instance (log)",
            logy=True,
            subtitle=subtitle,
        ),
        *plots.lines(
            cpu,
            outdir / "density-cpu",
            "Idle CPU per instance",
            "% of one CPU per instance",
            subtitle=subtitle,
        ),
    ]


__all__ = ["REFERENCE", "benchmarks", "describe", "plot"]
