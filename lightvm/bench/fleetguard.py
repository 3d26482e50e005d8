"""Keeping a big fleet from hurting the host: limits checked before, a watchdog during, a sweep after.

Why: ``lightvm bench density`` grows thousands of VMs on a machine that others share.
Before the first VM, :func:`preflight` refuses a fleet that the host's memory (as the
projection of a per-VM cost says), pid table, thread limit, open-file limit, ephemeral
ports or jail uid range cannot hold, naming the limit to raise. While the fleet grows and
idles, :class:`Watchdog` reads /proc/meminfo and /proc/loadavg every second and, when
MemAvailable drops below a floor or the load average climbs above a ceiling, interrupts
the run (the main thread gets KeyboardInterrupt; the suite's exit stack tears the fleet
down) and :meth:`Watchdog.check` then says why. After the fleet is gone,
:func:`leftovers` lists what the fleet's processes or files left behind.
"""

from __future__ import annotations

import _thread
import os
import resource
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lightvm.bench.ports import ephemeral_ports
from lightvm.bench.procfs import mem_available_kib
from lightvm.errors import LightVMError

GIB_KIB = 1 << 20
THREADS_PER_VM = 5  # a daytime QEMU has 4 (main, RCU, vCPU, a worker): one to spare
FDS_PER_VM = 4  # what the process growing the fleet may hold per VM, with room to spare


class FleetLimitError(LightVMError):
    """The host cannot hold the fleet asked for, or it stopped holding it during the run."""


@dataclass
class Limits:
    """The floors the run keeps: MemAvailable (KiB) and the 1-minute load average."""

    min_avail_kib: int = 6 * GIB_KIB
    max_load: float = 30.0


def _read_int(path: str, default: int = 0) -> int:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


def _tasks_now() -> int:
    """Threads running on the host now (pids in use)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                total += len(os.listdir(entry / "task"))
            except OSError:
                continue
    return total


def preflight(n: int, mib_per_vm: float, limits: Limits, ports: bool = False) -> list[str]:
    """What keeps this host from running ``n`` more VMs of ``mib_per_vm`` each (empty: nothing).

    Raises this process's soft open-file limit to its hard limit when that is what it takes.
    """
    problems = []
    avail = mem_available_kib()
    need = int(n * mib_per_vm * 1024)
    if avail - need < limits.min_avail_kib:
        problems.append(
            f"memory: {n} VMs x {mib_per_vm:.1f} MiB = {need / GIB_KIB:.1f} GiB would leave "
            f"{(avail - need) / GIB_KIB:.1f} GiB available, under the {limits.min_avail_kib / GIB_KIB:.0f} GiB floor "
            "(fewer VMs, or cut the per-VM cost: docs/memory.md)"
        )
    pid_max = _read_int("/proc/sys/kernel/pid_max", 32768)
    threads_max = _read_int("/proc/sys/kernel/threads-max", 1 << 30)
    tasks = _tasks_now() + n * THREADS_PER_VM
    for name, limit in (("kernel.pid_max", pid_max), ("kernel.threads-max", threads_max)):
        if tasks > limit * 0.9:
            problems.append(f"{name} = {limit}: {tasks} tasks with the fleet (sysctl -w {name}=...)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 256 + n * FDS_PER_VM
    if soft < want:
        if hard == resource.RLIM_INFINITY or hard >= want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        else:
            problems.append(f"open files: hard limit {hard} < {want} (ulimit -Hn)")
    if ports:
        low, high = ephemeral_ports()
        if high - low < 2 * n:
            problems.append(f"net.ipv4.ip_local_port_range {low}-{high}: too few ports for {n} forwards")
    from lightvm.jail import UID_COUNT

    if n > UID_COUNT // 2:
        problems.append(f"jail uids: {UID_COUNT} in the range, {n} VMs would crowd it")
    return problems


class Watchdog:
    """A thread that stops the run when the host runs short (see the module's doc)."""

    def __init__(self, limits: Limits, interval_s: float = 1.0) -> None:
        self.limits = limits
        self.interval_s = interval_s
        self.reason = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="density-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def breach(self) -> str:
        """Why the host is short now ("" when it is not)."""
        avail = mem_available_kib()
        if avail < self.limits.min_avail_kib:
            return f"MemAvailable {avail / GIB_KIB:.1f} GiB < {self.limits.min_avail_kib / GIB_KIB:.1f} GiB"
        load = os.getloadavg()[0]
        if load > self.limits.max_load:
            return f"load average {load:.1f} > {self.limits.max_load:.0f}"
        return ""

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            reason = self.breach()
            if reason:
                self.reason = reason
                print(f"density: watchdog: {reason}: stopping the run", file=sys.stderr, flush=True)
                _thread.interrupt_main()
                return

    def check(self) -> None:
        """:raise FleetLimitError: the watchdog tripped (the fleet is then torn down by the caller)."""
        if self.reason:
            raise FleetLimitError(f"density stopped: {self.reason}; the fleet was torn down")


def leftovers(marker: str, shm_names: list[str], vm_ids: Sequence[str] = ()) -> list[str]:
    """What a closed fleet left: processes whose command line names ``marker`` (the fleet's
    private state dir, which every VM's QEMU has in its arguments), its /dev/shm files, and
    for each of ``vm_ids`` its jail uid record and its cgroup folders."""
    from lightvm import cgroups, jail

    out = []
    for vm_id in vm_ids:
        if jail._by_vm(vm_id).exists():
            out.append(f"jail uid of VM {vm_id} still taken ({jail._by_vm(vm_id)})")
        out += [f"cgroup {folder} remains" for folder in cgroups._folders(vm_id) if folder.exists()]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in argv and state != "Z":
            out.append(f"pid {entry.name} still runs: {argv[:120]}")
    out += [f"/dev/shm/{name} remains" for name in shm_names if (Path("/dev/shm") / name).exists()]
    return out


__all__ = ["FleetLimitError", "Limits", "Watchdog", "leftovers", "preflight"]
