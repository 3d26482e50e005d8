"""Baseline: libvirt creating the same guest (``virDomainCreateXML`` via libvirt-python).

The guest is the one lightvm boots: the same kernel (PVH ELF), firmware, memory,
``-M microvm`` options and NoXS region (an ivshmem-plain device backed by a
/dev/shm file that the suite creates and writes, exactly as the toolstack does),
so READY is detected the same way: by polling the boot record in the shared
page. What libvirt cannot express for microvm (the ivshmem device on microvm's
PCIe, the machine options, isa-debug-exit) goes through ``<qemu:commandline>``.
The daemon is a private libvirtd (:mod:`lightvm.bench.libvirtd`), started and
stopped by the suite.

Timed: ``createXML`` call -> READY seen in the page (``ms``), with the moment
``createXML`` returned (``create_xml_ms``: libvirt starts QEMU paused, sets it
up over QMP, then resumes it).
"""

from __future__ import annotations

import contextlib
import html
import itertools
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any

from lightvm import hostfacts
from lightvm.bench.libvirtd import LibvirtDaemon
from lightvm.bench.runner import Sample
from lightvm.errors import LightVMError
from lightvm.machine import MICROVM
from lightvm.noxs import BootState, NoxsRegion, PageConfig
from lightvm.qemubin import DEBIAN_QEMU
from lightvm.spec import VMSpec

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "lightvm-bench-lv-"
BOOT_TIMEOUT = 30.0
POLL_S = 0.0002
GROW_JOBS = 2  # domains started at once while the fleet grows (the host has 2 cores)


def domain_xml(name: str, spec: VMSpec, noxs_path: Path, noxs_size: int, accel: str, log_path: Path) -> str:
    """The libvirt domain for ``spec`` with its NoXS region at ``noxs_path``."""
    # libvirt writes -machine microvm,...; QEMU merges a second -machine into it, which is
    # how microvm's own options (pcie=on for the ivshmem device, ...) get there.
    machine_opts = MICROVM.split(",", 1)[1]
    extra = [
        "-machine", machine_opts,
        "-object", f"memory-backend-file,id=noxs,mem-path={noxs_path},size={noxs_size},share=on",
        "-device", "ivshmem-plain,memdev=noxs",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
    ]  # fmt: skip
    args = "\n".join(f"    <qemu:arg value='{html.escape(a, quote=True)}'/>" for a in extra)
    loader = f"<loader type='rom'>{html.escape(str(spec.firmware))}</loader>" if spec.firmware else ""
    # The same 1 MiB translation cache lightvm gives small guests under TCG (machine.py).
    tcg = "<tcg><tb-cache unit='MiB'>1</tb-cache></tcg>" if accel == "tcg" and spec.memory_mib <= 64 else ""
    dom_type = "kvm" if accel == "kvm" else "qemu"  # libvirt's 'qemu' domain type is TCG
    return f"""<domain type='{dom_type}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{html.escape(name)}</name>
  <uuid>{uuidlib.uuid4()}</uuid>
  <memory unit='MiB'>{spec.memory_mib}</memory>
  <vcpu>{spec.vcpus}</vcpu>
  <os>
    <type arch='x86_64' machine='microvm'>hvm</type>
    {loader}
    <kernel>{html.escape(str(spec.kernel))}</kernel>
    <cmdline>{html.escape(spec.cmdline)}</cmdline>
  </os>
  <features><acpi/>{tcg}</features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/{DEBIAN_QEMU}</emulator>
    <serial type='file'><source path='{html.escape(str(log_path))}'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
{args}
  </qemu:commandline>
</domain>
"""


class LibvirtFleet:
    """N-1 running libvirt domains plus one measured ``createXML`` at a time."""

    variant = "libvirt"

    def __init__(self, spec: VMSpec, accel: str) -> None:
        import libvirt  # type: ignore[import-untyped,import-not-found,unused-ignore]

        self.spec = spec
        self.accel = accel
        self.tsc_hz = hostfacts.tsc_hz()
        self.daemon = LibvirtDaemon()
        self.domains: list[tuple[Any, NoxsRegion]] = []
        self._seq = itertools.count(1)
        try:
            self.conn = libvirt.open(self.daemon.uri)
        except libvirt.libvirtError as exc:
            self.daemon.close()
            raise LightVMError(f"libvirt baseline: cannot connect: {exc}") from exc

    def _start(self) -> tuple[Any, NoxsRegion, float, float]:
        import libvirt  # type: ignore[import-untyped,import-not-found,unused-ignore]

        seq = next(self._seq)  # atomic: grow() starts domains from several threads
        name = f"lvbench-{seq}"
        path = SHM_DIR / f"{SHM_PREFIX}{self.daemon.work.name}-{seq}"
        region = NoxsRegion.create(path, 1)
        try:
            region.write_config(PageConfig(name=name, tsc_hz=self.tsc_hz, nmi_doorbell=False))
            xml = domain_xml(name, self.spec, path, region.size, self.accel, self.daemon.work / f"{name}.console")
            t0 = time.perf_counter()
            try:
                dom = self.conn.createXML(xml, 0)
            except libvirt.libvirtError as exc:
                raise LightVMError(f"libvirt baseline: createXML: {exc}") from exc
            created = (time.perf_counter() - t0) * 1000
            try:
                _wait_ready(region, t0)
            except BaseException:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
                raise
            ready = (time.perf_counter() - t0) * 1000
        except BaseException:
            region.close()
            region.unlink()
            raise
        return dom, region, created, ready

    def grow(self, count: int) -> None:
        """Start domains until ``count`` run, GROW_JOBS at a time (not timed: a createXML
        takes ~0.25-0.6 s, and 999 of them one by one took 372 s of a 1,000-VM run)."""
        missing = count - len(self.domains)
        if missing <= 0:
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=GROW_JOBS, thread_name_prefix="libvirt-grow") as pool:
            futures = [pool.submit(self._start) for _ in range(missing)]
        errors = []
        for future in futures:  # keep every domain that started, so that close() frees it
            try:
                dom, region, _, _ = future.result()
            except Exception as exc:
                errors.append(exc)
                continue
            self.domains.append((dom, region))
        if errors:
            raise errors[0]

    def measure(self) -> Sample:
        dom, region, created, ready = self._start()
        t0 = time.perf_counter()
        _destroy(dom, region)
        destroy = (time.perf_counter() - t0) * 1000
        return {"ms": ready, "create_xml_ms": created, "destroy_ms": destroy}

    def pids(self) -> list[int]:
        """Each domain's QEMU (from libvirt's pid files), plus libvirtd itself: the daemon is
        part of what running VMs through libvirt costs the host."""
        from lightvm.bench.procfs import children_of

        pids = []
        for dom, _ in self.domains:
            pidfile = self.daemon.work / "run" / "qemu" / f"{dom.name()}.pid"
            with contextlib.suppress(OSError, ValueError):
                pids.append(int(pidfile.read_text().strip()))
        return pids + children_of(self.daemon.launcher_pid, "libvirtd")

    def close(self) -> None:
        # Not virDomainDestroy one by one: ~0.2 s each, 3.5 minutes for 1,000 domains. The
        # domains are transient, and closing the daemon kills (SIGKILL) and reaps every QEMU
        # it leaves behind (lightvm.bench.libvirtd), all at once.
        try:
            with contextlib.suppress(Exception):
                self.conn.close()
        finally:
            try:
                self.daemon.close()
            finally:
                for _dom, region in self.domains:
                    region.close()
                    region.unlink()
                self.domains.clear()


def _wait_ready(region: NoxsRegion, t0: float) -> None:
    ready = int(BootState.READY)
    deadline = t0 + BOOT_TIMEOUT
    while region.boot_state() != ready:
        if time.perf_counter() > deadline:
            raise LightVMError(f"libvirt baseline: guest not READY after {BOOT_TIMEOUT:.0f} s")
        time.sleep(POLL_S)


def _destroy(dom: Any, region: NoxsRegion) -> None:
    import libvirt  # type: ignore[import-untyped,import-not-found,unused-ignore]

    try:
        with contextlib.suppress(libvirt.libvirtError):
            dom.destroy()
    finally:
        region.close()
        region.unlink()


__all__ = ["LibvirtFleet", "domain_xml"]
