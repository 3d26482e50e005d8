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
  Also page tables (VmPTE, which Pss leaves out: ``pss_pte_mib_per_vm`` adds them),
  anonymous memory and threads per instance.
* ``density/VARIANT/cpu/n=N``: per instance, % of one CPU the idle fleet burns,
  from utime+stime of those processes (all threads) over a window (10 s); with
  ``--app daytime`` the VM variants then ask every VM the time over TCP (each VM's
  port 13 forwarded to a host port of its own): ``answered`` of ``asked``.

The rows are those of :data:`VARIANTS`: lightvm cold and split (from its pool daemon),
then the selected baselines. A new way to start VMs (templates, clones) becomes rows by
calling :func:`register` with a boot-suite ``Variant`` whose factory returns a fleet
(``grow``/``pids``/``close``, and ``query_all``/``marker`` to be asked and swept).

Big fleets (``--max-vms`` raises the refusal): before the first VM, the host's limits
are checked against the largest N (lightvm/bench/fleetguard.py: memory projected from a
per-VM cost, pids, threads, open files, ports, jail uids); a watchdog stops the run when
MemAvailable falls under ``LIGHTVM_DENSITY_MIN_AVAIL_GIB`` (6) or the load average rises
above ``LIGHTVM_DENSITY_MAX_LOAD`` (30); the fleet grows in steps of 50 (progress on
stderr); after each fleet is closed nothing of it may be left (processes, NoXS files).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightvm.bench import fleetguard
from lightvm.bench.fleets import Fleet, LightvmColdFleet, guest_spec
from lightvm.bench.procfs import cpu_ticks, mem_available_kib, smaps_rollup, status_fields
from lightvm.bench.runner import Benchmark, Result, Sample
from lightvm.bench.suite import SuiteOptions
from lightvm.errors import LightVMError
from lightvm.state import SHM_PREFIX, shm_dir

if TYPE_CHECKING:
    from lightvm.bench.boot import Variant

REFERENCE = "lightvm-cold"
SETTLE_S = 1.0  # let the newest VMs finish their boot before sampling
GROW_STEP = 50  # VMs between two looks at the watchdog (and progress lines)
DAYTIME_PORT = 13
# What a VM is assumed to cost before one was measured (the preflight's projection):
# the Pss of an idle daytime QEMU, rounded up (docs/memory.md).
ASSUMED_MIB_PER_VM = 9.0


def _lightvm_cold(opts: SuiteOptions) -> Fleet:
    port = DAYTIME_PORT if opts.app == "daytime" else None
    return LightvmColdFleet(guest_spec(opts.app), opts.accel, publish_port=port)


def _lightvm_split(opts: SuiteOptions) -> Fleet:
    from lightvm.bench.split import SplitFleet

    # The pool takes vif-less guests only (noop); the N measured VMs are --app's, created
    # through the daemon, each published when they are daytime servers.
    return SplitFleet(app="noop", bg_app=opts.app, accel=opts.accel, publish=opts.app == "daytime")


def _lightvm_clone(opts: SuiteOptions) -> Fleet:
    from lightvm.bench.clonefleet import LightvmCloneFleet

    port = DAYTIME_PORT if opts.app == "daytime" else None
    return LightvmCloneFleet(guest_spec(opts.app), opts.accel, port)


def _variants() -> list[Variant]:
    from lightvm.bench.boot import VARIANTS as BOOT
    from lightvm.bench.boot import Variant

    mine = [
        Variant("lightvm-cold", "lightvm", _lightvm_cold, lambda: None, "Toolstack.create, cold path (NoXS, no pool)"),
        Variant("lightvm-split", "lightvm", _lightvm_split, lambda: None, "created through lightvmd (pool daemon)"),
        Variant(
            "lightvm-clone", "lightvm", _lightvm_clone, lambda: None, "clones of one template (its RAM mapped private)"
        ),
    ]
    return [*mine, *(v for v in BOOT if v.kind == "baseline")]


_REGISTERED: list[Variant] = []


def register(variant: Variant) -> None:
    """Add a way to start VMs as density rows (after lightvm's own, before the baselines).

    ``variant.factory(opts)`` returns a fleet: ``grow(k)`` keeps k idle VMs of
    ``opts.app`` running, ``pids()`` the host processes they cost (daemons included),
    ``close()`` removes everything; optional ``query_all() -> (answered, asked)`` and
    ``marker`` (a string in every one of its processes' arguments, for the leftover sweep).
    """
    if any(v.name == variant.name for v in _REGISTERED):
        raise LightVMError(f"density: a variant {variant.name!r} is registered already")
    _REGISTERED.append(variant)


def variants() -> list[Variant]:
    """Every density variant: lightvm's cold, split and clones, the registered ones, the baselines."""
    base = _variants()
    return [*(v for v in base if v.kind == "lightvm"), *_REGISTERED, *(v for v in base if v.kind != "lightvm")]


def _limits() -> fleetguard.Limits:
    env = os.environ
    return fleetguard.Limits(
        min_avail_kib=int(float(env.get("LIGHTVM_DENSITY_MIN_AVAIL_GIB", "6")) * fleetguard.GIB_KIB),
        max_load=float(env.get("LIGHTVM_DENSITY_MAX_LOAD", "30")),
    )


class _Density:
    """The one fleet alive at a time (variants never share the host), and its measurements."""

    def __init__(self, opts: SuiteOptions) -> None:
        self.opts = opts
        self.variant: Variant | None = None
        self.fleet: Fleet | None = None
        self.baseline_avail_kib = 0
        self.limits = _limits()
        self.watchdog = fleetguard.Watchdog(self.limits)
        self.mib_per_vm = ASSUMED_MIB_PER_VM  # the projection's cost: the last measured Pss + page tables
        self._noxs_names: set[str] = set()
        self._vm_ids: set[str] = set()  # every VM the fleet ran: its jail uid and cgroups must go

    def grow(self, variant: Variant, n: int) -> None:
        self.watchdog.check()  # tripped during an earlier row: start no more VMs
        if self.variant is not variant or self.fleet is None:
            self.close()
            why = variant.available()
            if why:
                raise LightVMError(f"{variant.name}: {why}")
            time.sleep(SETTLE_S)  # the previous fleet's memory is given back
            self.baseline_avail_kib = mem_available_kib()
            self.variant, self.fleet = variant, variant.factory(self.opts)
        have = len(self.fleet.pids())
        problems = fleetguard.preflight(
            max(0, n - have), self.mib_per_vm, self.limits, ports=self.opts.app == "daytime"
        )
        if problems:
            raise fleetguard.FleetLimitError(f"density: {variant.name} x {n} refused: " + "; ".join(problems))
        t0 = time.monotonic()
        step = GROW_STEP
        try:
            while True:
                target = min(n, (have // step + 1) * step)
                self.fleet.grow(target)
                have = target
                self.watchdog.check()
                if n >= 2 * step:
                    avail = mem_available_kib() / fleetguard.GIB_KIB
                    print(
                        f"density: {variant.name} {have}/{n} running ({time.monotonic() - t0:.0f} s, "
                        f"MemAvailable {avail:.1f} GiB, load {os.getloadavg()[0]:.1f})",
                        file=sys.stderr,
                        flush=True,
                    )
                if have >= n:
                    break
        except KeyboardInterrupt:
            self.watchdog.check()  # the watchdog's interrupt: say why
            raise
        time.sleep(SETTLE_S)

    def _pids(self, n: int) -> list[int]:
        self.watchdog.check()
        if self.fleet is None:
            raise LightVMError("density: no fleet (its set-up failed)")
        pids = self.fleet.pids()
        if len(pids) < n:
            raise LightVMError(f"density: {n} instances wanted but only {len(pids)} processes found")
        return pids

    def memory(self, n: int) -> Sample:
        total = dict.fromkeys(("Pss", "Rss", "Anonymous", "VmPTE", "Threads"), 0)
        for pid in self._pids(n):
            for source in (smaps_rollup(pid), status_fields(pid)):
                for key, value in source.items():
                    if key in total:
                        total[key] += value
        self._remember_ids()
        extra = self._noxs_bytes() if isinstance(self.fleet, LightvmColdFleet) else 0
        host = self.baseline_avail_kib - mem_available_kib()
        pss = (total["Pss"] * 1024 + extra) / n / 2**20
        pte = total["VmPTE"] / n / 1024
        self.mib_per_vm = max(pss + pte, 0.01)
        return {
            "pss_mib_per_vm": pss,
            "pss_pte_mib_per_vm": pss + pte,
            "pte_mib_per_vm": pte,
            "anon_mib_per_vm": total["Anonymous"] / n / 1024,
            "rss_mib_per_vm": total["Rss"] / n / 1024,
            "threads_per_vm": total["Threads"] / n,
            "host_mib_per_vm": host / n / 1024,
        }

    def _remember_ids(self) -> None:
        fleet = self.fleet
        if isinstance(fleet, LightvmColdFleet):
            self._vm_ids.update(info.id for info in fleet.ts.list() if info.id)
        elif fleet is not None and hasattr(fleet, "call"):  # a lightvmd-backed fleet (split)
            self._vm_ids.update(str(i["id"]) for i in fleet.call("list") if i.get("id"))

    def _noxs_bytes(self) -> int:
        assert isinstance(self.fleet, LightvmColdFleet)
        # The toolstack names a VM's NoXS file after its id; count this fleet's only.
        ids = {info.id for info in self.fleet.ts.list() if info.id}
        files = [p for p in shm_dir().glob(f"{SHM_PREFIX}*") if p.name.split("-", 1)[1] in ids]
        self._noxs_names.update(p.name for p in files)
        return sum(p.stat().st_size for p in files)

    def cpu(self, n: int) -> Sample:
        pids = self._pids(n)
        hz = os.sysconf("SC_CLK_TCK")
        t0 = time.monotonic()
        before = sum(cpu_ticks(p) for p in pids)
        time.sleep(self.opts.idle_window_s)
        after = sum(cpu_ticks(p) for p in pids)
        elapsed = time.monotonic() - t0
        total_pct = (after - before) / hz / elapsed * 100
        sample: Sample = {"cpu_pct_per_vm": total_pct / n, "cpu_pct_total": total_pct}
        query = getattr(self.fleet, "query_all", None)
        if query is not None and getattr(self.fleet, "ports", None):
            answered, asked = query()  # after the window: a query wakes the VM it asks
            sample.update({"answered": float(answered), "asked": float(asked)})
            if answered < asked:
                raise LightVMError(f"density: {asked - answered} of {asked} VMs did not answer a daytime query")
        return sample

    def close(self) -> None:
        fleet, self.fleet, self.variant = self.fleet, None, None
        if fleet is None:
            return
        marker = getattr(fleet, "marker", "")
        fleet.close()
        left = fleetguard.leftovers(marker, sorted(self._noxs_names), sorted(self._vm_ids)) if marker else []
        self._noxs_names, self._vm_ids = set(), set()
        if left:
            raise LightVMError(f"density: the fleet left {len(left)} things behind: {'; '.join(left[:5])}")


def benchmarks(opts: SuiteOptions, stack: contextlib.ExitStack) -> list[Benchmark]:
    state = _Density(opts)
    stack.callback(state.close)
    stack.enter_context(state.watchdog)
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

    selected = [v for v in variants() if v.kind != "baseline" or v.name in opts.baselines]
    return [row for v in selected for n in sorted(set(opts.vms)) for row in rows(v, n)]


def describe() -> dict[str, Any]:
    return {
        "variants": {v.name: {"kind": v.kind, "doc": v.doc} for v in variants()},
        "processes": {
            "lightvm-cold": "each VM's QEMU (no daemon: lightvm has none)",
            "lightvm-split": "each VM's QEMU, plus lightvmd (shared by the N VMs)",
            "libvirt": "each domain's QEMU, plus libvirtd (its cost is shared by the N VMs)",
            "crun": "each container's process (crun leaves no monitor process)",
            "fork-exec": "each process",
        },
        "metrics": {
            "pss_mib_per_vm": "sum of QEMU Pss (smaps_rollup) + NoXS files, / N",
            "rss_mib_per_vm": "sum of QEMU Rss / N (shared pages counted in every VM)",
            "pte_mib_per_vm": "sum of VmPTE (page tables, not in Pss) / N",
            "pss_pte_mib_per_vm": "pss_mib_per_vm + pte_mib_per_vm: what the host gives each VM",
            "threads_per_vm": "threads of the processes / N (each takes a pid)",
            "answered/asked": "daytime: VMs that answered a TCP daytime query after the idle window",
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
