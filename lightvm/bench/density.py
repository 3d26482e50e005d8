"""``lightvm bench density``: host memory and idle CPU per VM at N running VMs (Figs. 14-15).

For each N (ascending), the fleet of lightvm VMs (toolstack cold path) grows to
N, then two rows measure it:

* ``density/memory/n=N``: per VM, the proportional set size of each QEMU
  (``Pss`` in /proc/PID/smaps_rollup: private pages plus a fair share of the
  shared libraries and of the guest's memfd RAM) plus the VM's NoXS file in
  /dev/shm; also RSS, and the host's MemAvailable drop since before the
  first VM divided by N (catches memory outside the QEMUs).
* ``density/cpu/n=N``: per VM, % of one CPU the idle fleet burns, from
  utime+stime of every QEMU (and its threads) over a window (default 10 s).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from lightvm.bench.fleets import LightvmColdFleet, guest_spec
from lightvm.bench.runner import Benchmark, Result, Sample
from lightvm.bench.suite import SuiteOptions
from lightvm.errors import LightVMError

REFERENCE = "lightvm-cold"
SETTLE_S = 1.0  # let the newest VMs finish their boot before sampling


def smaps_rollup(pid: int) -> dict[str, int]:
    """Fields of /proc/PID/smaps_rollup in KiB (empty when the process is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[-1] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1])
    except (OSError, ValueError):
        return {}
    return out


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks; 0 when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)


def mem_available_kib() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:"))


class _Density:
    def __init__(self, opts: SuiteOptions) -> None:
        self.opts = opts
        self.fleet: LightvmColdFleet | None = None
        self.baseline_avail_kib = 0

    def grow(self, n: int) -> None:
        if self.fleet is None:
            self.baseline_avail_kib = mem_available_kib()
            self.fleet = LightvmColdFleet(guest_spec(self.opts.app), self.opts.accel)
        self.fleet.grow(n)
        time.sleep(SETTLE_S)

    def pids(self) -> list[int]:
        if self.fleet is None:
            raise LightVMError("density: no fleet")
        pids = self.fleet.pids()
        if len(pids) != self.fleet.count:
            raise LightVMError(f"density: {self.fleet.count} VMs created but {len(pids)} QEMU processes found")
        return pids

    def memory(self) -> Sample:
        pids = self.pids()
        n = len(pids)
        pss = rss = 0
        for pid in pids:
            rollup = smaps_rollup(pid)
            pss += rollup.get("Pss", 0)
            rss += rollup.get("Rss", 0)
        shm = self._noxs_bytes()
        host = self.baseline_avail_kib - mem_available_kib()
        return {
            "pss_mib_per_vm": (pss * 1024 + shm) / n / 2**20,
            "rss_mib_per_vm": rss / n / 1024,
            "host_mib_per_vm": host / n / 1024,
        }

    def _noxs_bytes(self) -> int:
        assert self.fleet is not None
        # The toolstack names a VM's NoXS file after its id; count this fleet's only.
        ids = {info.id for info in self.fleet.ts.list() if info.id}
        return sum(p.stat().st_size for p in Path("/dev/shm").glob("lightvm-*") if p.name.split("-", 1)[1] in ids)

    def cpu(self) -> Sample:
        pids = self.pids()
        hz = os.sysconf("SC_CLK_TCK")
        t0 = time.monotonic()
        before = sum(cpu_ticks(p) for p in pids)
        time.sleep(self.opts.idle_window_s)
        after = sum(cpu_ticks(p) for p in pids)
        elapsed = time.monotonic() - t0
        total_pct = (after - before) / hz / elapsed * 100
        return {"cpu_pct_per_vm": total_pct / len(pids), "cpu_pct_total": total_pct}

    def close(self) -> None:
        if self.fleet is not None:
            self.fleet.close()
            self.fleet = None


def benchmarks(opts: SuiteOptions, stack: contextlib.ExitStack) -> list[Benchmark]:
    state = _Density(opts)
    stack.callback(state.close)
    rows = []
    for n in sorted(set(opts.vms)):
        params: dict[str, Any] = {"variant": REFERENCE, "n": n}
        rows.append(
            Benchmark(
                f"density/memory/n={n}", state.memory, warmup=0, iterations=max(1, min(opts.iterations, 3)),
                params={**params, "measure": "memory"}, metric="pss_mib_per_vm", unit="MiB",
                before=lambda n=n: state.grow(n),  # type: ignore[misc]
            )
        )  # fmt: skip
        rows.append(
            Benchmark(
                f"density/cpu/n={n}", state.cpu, warmup=0, iterations=max(1, min(opts.iterations, 3)),
                params={**params, "measure": "cpu"}, metric="cpu_pct_per_vm", unit="%",
            )
        )  # fmt: skip
    return rows


def describe() -> dict[str, Any]:
    return {
        "variants": {REFERENCE: {"kind": "lightvm", "doc": "idle VMs made by Toolstack.create (cold path)"}},
        "metrics": {
            "pss_mib_per_vm": "sum of QEMU Pss (smaps_rollup) + NoXS files, / N",
            "rss_mib_per_vm": "sum of QEMU Rss / N (shared pages counted in every VM)",
            "host_mib_per_vm": "drop of MemAvailable since before the first VM, / N (noisy: other tenants)",
            "cpu_pct_per_vm": "utime+stime of all QEMUs over the idle window, % of one CPU, / N",
        },
        "not_implemented": ["libvirt/crun/fork-exec density baselines"],
    }


def plot(results: list[Result], outdir: Path, subtitle: str = "") -> list[Path]:
    from lightvm.bench import plots

    memory = [r for r in results if r.params.get("measure") == "memory"]
    cpu = [r for r in results if r.params.get("measure") == "cpu"]
    return [
        *plots.lines(memory, outdir / "density-memory", "Host memory per VM (PSS)", "MiB per VM", subtitle=subtitle),
        *plots.lines(cpu, outdir / "density-cpu", "Idle CPU per VM", "% of one CPU per VM", subtitle=subtitle),
    ]


__all__ = ["REFERENCE", "benchmarks", "cpu_ticks", "describe", "plot", "smaps_rollup"]
