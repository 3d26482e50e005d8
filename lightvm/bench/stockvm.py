"""The stock Debian baseline of ``lightvm bench tinyx``: redis on Debian's cloud kernel,
its initrd and a debootstrap root disk (tinyx/image/stock.py builds them), booted by QEMU.

How it boots (measured, docs/tinyx-bench.md "The stock Debian baseline"): ``-M microvm`` with
its default qboot firmware loading the bzImage and initrd given with ``-kernel`` and
``-initrd``; the disk and NIC are virtio-mmio devices, which microvm describes in ACPI
(the kernel's virtio_mmio driver is built in, the initrd loads virtio_blk and
virtio_net); the clock: microvm's default ``rtc=on`` (lightvm's own machine turns the RTC
off, which costs a Linux kernel ~1 s waiting for it). Root is ``/dev/vda`` read-write,
behind ``snapshot=on`` so that a boot never writes into the cached image (QEMU keeps the
writes in a temporary qcow2 it deletes). The app's port is published with a user
networking ``hostfwd``, as for the Tinyx user-net variant, and timed the same way: from
the spawn of QEMU to the first ``+PONG`` on the host port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from lightvm import hostfacts
from lightvm.bench.ports import free_port
from lightvm.bench.runner import Sample
from lightvm.errors import LightVMError
from lightvm.linux import LINUX_TCG_CPU, linux_cmdline
from lightvm.qemubin import qemu_binary
from lightvm.tcpprobe import wait_serving

BUILD_TIMEOUT_S = 1800  # a cold cache: debootstrap (~4 min here), apt with the kernel and its initrd
# A systemd boot under TCG on this 2-core host: 18-22 s quiet, up to 162 s at load 14 (docs/tinyx-bench.md).
SERVE_TIMEOUT_S = 300.0
MACHINE = "microvm"  # QEMU's defaults: qboot, ACPI, RTC on
MEMORY_MIB = 256
# The kernel command line is the Tinyx guests' (lightvm/linux.py: serial console, quiet,
# RDRAND trusted, tsc_early_khz= against the TCG calibration hang) plus the root disk.
TCG_CPU = LINUX_TCG_CPU
ROOT_ARGS = "root=/dev/vda rw"
GUEST_PORT = 6379
QUIT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class StockImage:
    """The three files of a built stock image (tinyx/image/stock.py's cache entry)."""

    folder: Path

    @property
    def kernel(self) -> Path:
        return self.folder / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.folder / "initrd.img"

    @property
    def disk(self) -> Path:
        return self.folder / "root.img"

    def sizes(self) -> Sample:
        """MiB of the kernel, the initrd and the root disk (allocated on the host, and
        apparent: the sparse file's length); ``mib`` is what a boot needs: kernel + initrd
        + the disk's allocated bytes."""
        kernel, initrd = self.kernel.stat().st_size / 2**20, self.initrd.stat().st_size / 2**20
        st = self.disk.stat()
        disk, apparent = st.st_blocks * 512 / 2**20, st.st_size / 2**20
        return {
            "mib": kernel + initrd + disk,
            "kernel_mib": kernel,
            "initrd_mib": initrd,
            "kernel_initrd_mib": kernel + initrd,
            "disk_mib": disk,
            "disk_apparent_mib": apparent,
        }


def build_stock() -> StockImage:
    """``python -m tinyx.image.stock`` (progress on our stderr): the cached stock image's folder.

    :raise LightVMError: the build failed or timed out.
    """
    argv = [sys.executable, "-m", "tinyx.image.stock"]
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, timeout=BUILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise LightVMError(f"the stock image build took over {BUILD_TIMEOUT_S} s; run {' '.join(argv[1:])}") from None
    if proc.returncode != 0:
        raise LightVMError(f"the stock image build exited {proc.returncode} (its error is above, on stderr)")
    return StockImage(Path(proc.stdout.strip().splitlines()[-1]))


def qemu_argv(image: StockImage, accel: str, port: int, console: Path, tsc_hz: int) -> list[str]:
    """QEMU's command line for one boot of ``image`` with guest port 6379 on 127.0.0.1:``port``;
    ``tsc_hz`` the host's TSC rate (0: unknown)."""
    cpu = ["-cpu", "host"] if accel == "kvm" else ["-cpu", TCG_CPU]
    # fmt: off
    return [
        qemu_binary(MACHINE),
        "-M", MACHINE, "-accel", accel, *cpu, "-m", f"{MEMORY_MIB}M", "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", f"file:{console}",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", linux_cmdline(ROOT_ARGS, tsc_hz),
        "-drive", f"id=root,file={image.disk},format=raw,if=none,snapshot=on",
        "-device", "virtio-blk-device,drive=root",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_PORT}",
        "-device", "virtio-net-device,netdev=n0",
    ]
    # fmt: on


class StockVMs:
    """One stock VM at a time: spawn QEMU, time to the first ``+PONG``, kill it."""

    variant = "stock"

    def __init__(self, image: StockImage, accel: str, send: bytes, expect: bytes) -> None:
        self.image = image
        self.accel = accel
        self.send, self.expect = send, expect
        self._tmp = tempfile.TemporaryDirectory(prefix="lightvm-bench-tinyx-stock-")
        self.work = Path(self._tmp.name)
        self.serve_timeout = SERVE_TIMEOUT_S
        self.proc: subprocess.Popen[bytes] | None = None
        self.seq = 0
        self.tsc_hz = hostfacts.tsc_hz()

    def _start(self) -> tuple[int, float]:
        self.seq += 1
        port = free_port()
        console = self.work / f"console{self.seq}.log"
        argv = qemu_argv(self.image, self.accel, port, console, self.tsc_hz)
        # TMPDIR: snapshot=on's temporary overlay goes into the run's folder (removed with it).
        env = {**os.environ, "TMPDIR": str(self.work)}
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
            start_new_session=True,
        )  # fmt: skip
        return port, t0

    def _serving(self, port: int, t0: float) -> float:
        try:
            return wait_serving(port, self.send, self.expect, t0, self.serve_timeout)
        except LightVMError as exc:
            raise LightVMError(f"stock VM: {exc}; {self._why()}") from None

    def _why(self) -> str:
        proc = self.proc
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            return f"QEMU exited {proc.returncode}: {err[-300:]}"
        logs = sorted(self.work.glob("console*.log"))
        tail = logs[-1].read_text(errors="replace").strip().splitlines()[-3:] if logs else []
        return f"console's last lines: {' | '.join(tail) or '(empty)'}"

    def stop(self) -> None:
        """Kill the VM's QEMU (no shutdown: the disk is a throw-away snapshot) and reap it."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        try:
            proc.wait(timeout=QUIT_TIMEOUT_S)
        finally:
            if proc.stderr:
                proc.stderr.close()
        for f in self.work.glob("console*.log"):
            f.unlink()

    def measure(self) -> Sample:
        port, t0 = self._start()
        try:
            return {"ms": self._serving(port, t0)}
        finally:
            self.stop()

    def idle(self, window_s: float) -> Sample:
        from lightvm.bench.tinyxfleets import idle_cost

        port, t0 = self._start()
        try:
            self._serving(port, t0)
            assert self.proc is not None
            return idle_cost([self.proc.pid], window_s)
        finally:
            self.stop()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._tmp.cleanup()
