"""Accelerator choice: is KVM really usable here, or do we run on TCG?

``/dev/kvm`` existing proves little. On these hosts it is a nested PVM hypervisor
(module ``kvm_pvm``) that emulates guest ring 0 about 1000x slower than TCG runs it
(docs/qemu-notes.md). So ``auto`` decides in three steps, cheapest first:

1. ``/dev/kvm`` cannot be opened read-write -> tcg.
2. ``/sys/module/kvm_pvm`` exists -> tcg (known unusable; no probe needed).
3. Otherwise boot the noop guest once under KVM and once under TCG: KVM is usable only
   if it reaches READY within :data:`PROBE_TIMEOUT` and boots no slower than TCG.
   The verdict is cached per host (hostname, kernel release, QEMU binary identity).

``--accel kvm`` is honoured even where the probe said no, as long as /dev/kvm opens
(useful to reproduce the slowness); ``--accel tcg`` always works.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lightvm import hostfacts, paths
from lightvm.errors import AccelError, LightVMError
from lightvm.machine import QEMU_BINARY, Machine, MachineConfig
from lightvm.noxs import NoxsRegion, PageConfig, region_size_for

CHOICES = ("auto", "kvm", "tcg")
PROBE_TIMEOUT = 2.0
PROBE_KERNEL_ENV = "LIGHTVM_PROBE_KERNEL"
KVM_DEVICE = Path("/dev/kvm")
PVM_MODULE = Path("/sys/module/kvm_pvm")


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" or "tcg"
    reason: str


def kvm_open_error() -> str | None:
    """Why /dev/kvm cannot be used, or None if it opens read-write."""
    try:
        fd = os.open(KVM_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"{KVM_DEVICE}: {exc.strerror}{_open_hint(exc.errno)}"
    os.close(fd)
    return None


def _open_hint(errno_: int | None) -> str:
    """What to do about a failed open of /dev/kvm, as a parenthesis ('' if nothing to say)."""
    if errno_ == errno.ENOENT:
        return " (no KVM on this host: kernel module kvm_intel/kvm_amd not loaded, or no virtualization)"
    if errno_ in (errno.EACCES, errno.EPERM):
        try:
            group = grp.getgrgid(os.stat(KVM_DEVICE).st_gid).gr_name
        except (OSError, KeyError):
            return ""
        return f" (join group {group!r}: sudo usermod -aG {group} $USER, then log in again)"
    return ""


def host_key(binary: str = QEMU_BINARY) -> str:
    """Identity of (host, kernel, QEMU build) for the cached verdict; cheap (no exec)."""
    path = _which(binary)
    try:
        st = os.stat(path)
        qemu = f"{path}:{st.st_size}:{int(st.st_mtime)}"
    except OSError:
        qemu = f"{binary}:missing"
    uname = os.uname()
    return f"{socket.gethostname()}|{uname.release}|{qemu}"


def probe_kernel() -> Path | None:
    """The noop guest used by the probe: ``$LIGHTVM_PROBE_KERNEL``, else the packaged or built
    noop.elf (:func:`lightvm.paths.guest`: a wheel ships it, a checkout builds it)."""
    env = os.environ.get(PROBE_KERNEL_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(paths.guest("noop"))
    return next((p for p in candidates if p.is_file()), None)


def select(requested: str = "auto") -> AccelChoice:
    """Resolve ``requested`` (auto|kvm|tcg) to the accelerator to run.

    :raise AccelError: for ``kvm`` when /dev/kvm cannot be opened, or an unknown name.
    """
    if requested == "tcg":
        return AccelChoice("tcg", "requested")
    if requested not in CHOICES:
        raise AccelError(f"unknown accelerator {requested!r}; use one of {', '.join(CHOICES)}")
    error = kvm_open_error()
    if requested == "kvm":
        if error:
            raise AccelError(f"--accel kvm: {error}; use --accel tcg")
        return AccelChoice("kvm", "requested")
    if error:
        return AccelChoice("tcg", f"kvm unusable: {error}")
    if PVM_MODULE.exists():
        return AccelChoice("tcg", "kvm unusable: /dev/kvm is the nested PVM hypervisor (kvm_pvm), slower than tcg")
    key = host_key()
    cache = hostfacts.load_cache()
    verdict = cache.get("accel")
    if isinstance(verdict, dict) and verdict.get("key") == key and verdict.get("accel") in ("kvm", "tcg"):
        return AccelChoice(str(verdict["accel"]), f"cached probe: {verdict.get('reason', '')}")
    kernel = probe_kernel()
    if kernel is None:
        return AccelChoice(
            "tcg", f"kvm untested: no probe guest ({paths.guest('noop')}: make -C images, or reinstall lightvm)"
        )
    choice = probe(kernel)
    cache["accel"] = {"key": key, "accel": choice.accel, "reason": choice.reason, "when": time.time()}
    hostfacts.save_cache(cache)
    return choice


def probe(kernel: Path) -> AccelChoice:
    """Boot ``kernel`` under kvm and tcg and compare (about 0.1 s when kvm is good)."""
    try:
        kvm_ms = probe_boot(kernel, "kvm", PROBE_TIMEOUT)
    except LightVMError as exc:
        return AccelChoice("tcg", f"kvm probe failed: {exc}")
    try:
        tcg_ms = probe_boot(kernel, "tcg", PROBE_TIMEOUT * 5)
    except LightVMError:
        return AccelChoice("kvm", f"kvm probe booted in {kvm_ms:.1f} ms (tcg probe failed)")
    if kvm_ms <= tcg_ms:
        return AccelChoice("kvm", f"kvm probe booted in {kvm_ms:.1f} ms vs tcg {tcg_ms:.1f} ms")
    return AccelChoice("tcg", f"kvm probe slower than tcg ({kvm_ms:.1f} ms vs {tcg_ms:.1f} ms)")


def probe_boot(kernel: Path, accel: str, timeout: float) -> float:
    """Boot the noop guest once; return the guest part of the boot (cont -> READY) in ms.

    :raise LightVMError: if it does not reach READY in ``timeout`` seconds.
    """
    from lightvm.boot import boot  # boot imports machine; keep the import graph acyclic

    with scratch_machine(f"probe-{accel}", kernel, accel) as (machine, region):
        t0 = time.perf_counter()
        machine.launch()
        times, _ = boot(machine, region, t0, timeout)
        assert times.ready is not None
        start = times.qemu_up if times.qemu_up is not None else 0.0
        return times.ready - start


@contextlib.contextmanager
def scratch_machine(
    name: str, kernel: Path, accel: str, extra_args: tuple[str, ...] = ()
) -> Iterator[tuple[Machine, NoxsRegion]]:
    """A throwaway QEMU (not launched yet) for a noop-like ``kernel``, on a NoXS page of its
    own and a temporary folder, all removed on exit (the QEMU killed): what the probe
    boots, and what the QMP benches (lightvm/bench/qmp.py) talk to."""
    import tempfile
    import uuid

    from lightvm.state import SHM_PREFIX, shm_dir

    with tempfile.TemporaryDirectory(prefix=f"lightvm-{name}-") as tmp:
        work = Path(tmp)
        shm = shm_dir() / f"{SHM_PREFIX}{name}-{uuid.uuid4().hex[:12]}"
        region = NoxsRegion.create(shm, 1)
        try:
            region.write_config(PageConfig(name=name, tsc_hz=hostfacts.tsc_hz()))
            config = MachineConfig(
                name=name,
                kernel=kernel,
                memory_mib=16,
                vcpus=1,
                cmdline="",
                accel=accel,
                noxs_path=shm,
                noxs_size=region_size_for(1),
                console_path=work / "console.log",
                qmp_path=work / "qmp.sock",
                log_path=work / "qemu.log",
                extra_args=extra_args,
            )
            with Machine(config) as machine:
                yield machine, region
        finally:
            region.close()
            region.unlink()


def _which(binary: str) -> str:
    if os.sep in binary:
        return binary
    for folder in os.environ.get("PATH", "/usr/bin").split(os.pathsep):
        candidate = os.path.join(folder, binary)
        if os.access(candidate, os.X_OK):
            return candidate
    return binary


__all__ = ["CHOICES", "AccelChoice", "AccelError", "probe", "select"]
