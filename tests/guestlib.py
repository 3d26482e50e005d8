"""Launch lightvm unikernels under QEMU for tests and measurements.

One :class:`Guest` is one QEMU process plus its NoXS region (a /dev/shm file
named ``lvtest-*``) and its console log. It is a context manager: whatever
happens, :meth:`Guest.close` kills and reaps QEMU, closes the QMP socket and
unlinks the region and the log. Every wait has a deadline.

Typical use::

    images = build_images()
    with Guest(images / "noop.elf") as g:
        g.write_config(PageConfig(name="t"))
        g.launch()
        g.wait_boot_state(BootState.READY, timeout=10)
        g.region.request(Sysctl.POWEROFF)
        assert g.wait_exit(timeout=10) == EXIT_POWEROFF

Hostile-page tests write the page with ``g.region`` / ``g.region.raw()``
before :meth:`Guest.launch`.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from lightvm.noxs import (
    BootRecord,
    BootState,
    DevEntry,
    DevicePage,
    DevType,
    NoxsRegion,
    PageConfig,
    VifConfig,
    VifCtrl,
)
from lightvm.qemubin import qemu_binary

REPO = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPO / "images"
BUILD_DIR = IMAGES_DIR / "build"
QEMU = qemu_binary("microvm")  # for MACHINE; qemu_argv picks per machine (lightvm/qemubin.py)
SHM_PREFIX = "lvtest-"

# QEMU exit statuses of our guests (isa-debug-exit: status = value << 1 | 1).
EXIT_POWEROFF = 1  # guest_poweroff(): clean
EXIT_FATAL = 3  # guest_fatal()
EXIT_TRIPLE_FAULT = 0  # -no-reboot and the guest reset itself

# ioapic2=off: microvm's second IO-APIC brings 16 more virtio-mmio transports
# (24 in all); one IO-APIC and 8 transports (GSI 16-23) boot ~2-3 ms faster.
MACHINE = "microvm,pcie=on,ioapic2=off,x-option-roms=off,rtc=off,pic=off"
ACCEL = "tcg,tb-size=1"
# Our minimal firmware (images/base/firmware.S): microvm with ACPI (needed for
# pcie=on) would otherwise run SeaBIOS for ~2.3 ms before the guest starts.
FIRMWARE = BUILD_DIR / "lvfw.bin"

_counter = itertools.count()


def build_images(*targets: str, timeout: float = 300.0) -> Path:
    """Run ``make -C images`` (all images, or just ``targets`` such as
    ``"noop.elf"``; the firmware is always built) and return the build directory.

    :raise subprocess.CalledProcessError: if the build fails (output attached).
    """
    goals = [f"build/{t}" for t in (*targets, "lvfw.bin")] if targets else []
    subprocess.run(
        ["make", "-C", str(IMAGES_DIR), "-s", "-j2", *goals],
        check=True,
        timeout=timeout,
        capture_output=True,
        text=True,
    )
    return BUILD_DIR


def qemu_argv(
    kernel: Path,
    region_path: Path | None,
    region_size: int,
    *,
    console: str,
    memory: str = "4M",
    machine: str = MACHINE,
    firmware: Path | None = FIRMWARE,
    accel: str = ACCEL,
    debug_exit: bool = True,
    qmp_socket: Path | None = None,
    paused: bool = False,
    extra: Sequence[str] = (),
) -> list[str]:
    """The QEMU command line our guests need (TCG, microvm with PCIe).

    ``console`` is a QEMU ``-serial`` backend spec, e.g. ``file:/tmp/x.log``.
    ``firmware=None`` keeps QEMU's default firmware (SeaBIOS for microvm+ACPI).
    """
    # Guest RAM from a memfd: shmem pages are 4 KiB (THP is off for shmem here), while
    # default anonymous RAM is madvised to huge pages and QEMU's first write into it
    # (loading the kernel) zeroes a 2 MiB page: ~2 ms per boot on these hosts. A
    # 1 MiB translation cache stays below huge-page size for the same reason (and
    # our guests' code is tens of KiB).
    argv = [
        qemu_binary(machine),
        "-M", f"{machine},memory-backend=lvram",
        "-accel", accel,
        "-m", memory,
        "-object", f"memory-backend-memfd,id=lvram,size={memory}",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        *(["-bios", str(firmware)] if firmware is not None else []),
        "-kernel", str(kernel),
        "-serial", console,
    ]  # fmt: skip
    if debug_exit:  # the guest's poweroff: exit status 1 clean, 3 fatal
        argv += ["-device", "isa-debug-exit,iobase=0xf4,iosize=4"]
    if region_path is not None:
        argv += [
            "-object", f"memory-backend-file,id=noxs,mem-path={region_path},size={region_size},share=on",
            "-device", "ivshmem-plain,memdev=noxs",
        ]  # fmt: skip
    if qmp_socket is not None:
        argv += ["-qmp", f"unix:{qmp_socket},server=on,wait=off"]
    if paused:
        argv.append("-S")
    argv += list(extra)
    return argv


class QmpSync:
    """A minimal blocking QMP client (greeting, capabilities, commands)."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        while True:
            try:
                self._sock.connect(str(path))
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    self._sock.close()
                    raise TimeoutError(f"QMP socket {path} did not accept within {timeout}s") from None
                time.sleep(0.001)
        self._buf = b""
        self._read_msg()  # greeting
        self.execute("qmp_capabilities")

    def _read_msg(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        msg: dict[str, Any] = json.loads(line)
        return msg

    def send(self, cmd: str, **args: Any) -> None:
        """Send a command without waiting for its reply."""
        msg: dict[str, Any] = {"execute": cmd}
        if args:
            msg["arguments"] = args
        self._sock.sendall(json.dumps(msg).encode() + b"\n")

    def execute(self, cmd: str, **args: Any) -> Any:
        """Send a command and return its ``return`` value (events skipped)."""
        self.send(cmd, **args)
        while True:
            msg = self._read_msg()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise RuntimeError(f"QMP {cmd}: {msg['error']}")

    def close(self) -> None:
        self._sock.close()


class Guest:
    """One guest: QEMU + NoXS region + console log, always cleaned up."""

    def __init__(
        self,
        kernel: Path,
        *,
        device_count: int = 1,
        region: bool = True,
        memory: str = "4M",
        machine: str = MACHINE,
        extra_args: Iterable[str] = (),
        qmp: bool = False,
        firmware: Path | None = FIRMWARE,
        accel: str = ACCEL,
        debug_exit: bool = True,
    ) -> None:
        self.kernel = Path(kernel)
        self.memory = memory
        self.machine = machine
        self.extra_args = list(extra_args)
        self.want_qmp = qmp
        self.firmware = firmware
        self.accel = accel
        self.debug_exit = debug_exit
        tag = f"{SHM_PREFIX}{os.getpid()}-{next(_counter)}"
        self._tmp = tempfile.TemporaryDirectory(prefix=tag + "-")
        self.console_path = Path(self._tmp.name) / "console.log"
        self.qmp_path = Path(self._tmp.name) / "qmp.sock"
        self.region: NoxsRegion | None = None
        if region:
            try:
                self.region = NoxsRegion.create(Path("/dev/shm") / tag, device_count)
            except BaseException:
                self._tmp.cleanup()
                raise
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QmpSync | None = None
        self.argv: list[str] = []

    # -- setup --

    def write_config(self, config: PageConfig) -> None:
        assert self.region is not None
        self.region.write_config(config)

    def launch(self, *, paused: bool = False) -> None:
        """Start QEMU (paused with ``-S`` if asked; then call :meth:`cont`)."""
        self.argv = qemu_argv(
            self.kernel,
            self.region.path if self.region else None,
            self.region.size if self.region else 0,
            console=f"file:{self.console_path}",
            memory=self.memory,
            machine=self.machine,
            firmware=self.firmware,
            accel=self.accel,
            debug_exit=self.debug_exit,
            qmp_socket=self.qmp_path if (self.want_qmp or paused) else None,
            paused=paused,
            extra=self.extra_args,
        )
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        if self.want_qmp or paused:
            self.qmp = QmpSync(self.qmp_path)

    def cont(self) -> None:
        """Resume a paused guest; does not wait for the reply (the guest may exit first)."""
        assert self.qmp is not None
        self.qmp.send("cont")

    # -- observation --

    def boot_record(self) -> BootRecord:
        assert self.region is not None
        return self.region.boot_record()

    def wait_boot_state(self, state: BootState, timeout: float = 10.0) -> BootRecord:
        """Poll the boot record until it reaches ``state``.

        :raise AssertionError: on timeout, QEMU exit, or the guest reporting ERROR
            first (the message carries the console).
        """
        assert self.region is not None
        deadline = time.monotonic() + timeout
        while True:
            raw = self.region.boot_state()
            if raw == state:
                return self.region.boot_record()
            if raw == BootState.ERROR and state != BootState.ERROR:
                raise AssertionError(f"guest reported ERROR: {self.boot_record()}\n{self.console()}")
            if self.proc is not None and self.proc.poll() is not None:
                if self.region.boot_state() == state:
                    return self.region.boot_record()
                raise AssertionError(
                    f"QEMU exited ({self.proc.returncode}) before {state.name}: {self.stderr_text()}\n{self.console()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {state.name} within {timeout}s: {self.boot_record()}\n{self.console()}")
            time.sleep(0.0002)

    def wait_console(self, text: str, timeout: float = 10.0) -> str:
        """Wait until the console log contains ``text``; return the whole log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.console()
            if text in log:
                return log
            if self.proc is not None and self.proc.poll() is not None:
                log = self.console()
                if text in log:
                    return log
                raise AssertionError(f"QEMU exited ({self.proc.returncode}) without {text!r}:\n{log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} on the console within {timeout}s:\n{log}")
            time.sleep(0.002)

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait for QEMU to exit by itself; return its status.

        :raise subprocess.TimeoutExpired: if it is still running at the deadline.
        """
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_lines(self) -> list[str]:
        return self.console().splitlines()

    def stderr_text(self) -> str:
        if self.proc is None or self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")

    # -- teardown --

    def close(self) -> None:
        try:
            if self.qmp is not None:
                self.qmp.close()
        finally:
            self.qmp = None
            try:
                if self.proc is not None:
                    if self.proc.poll() is None:
                        self.proc.send_signal(signal.SIGKILL)
                    self.proc.wait(timeout=10)
                    if self.proc.stderr is not None:
                        self.proc.stderr.close()
            finally:
                if self.region is not None:
                    self.region.close()
                    self.region.unlink()
                self._tmp.cleanup()

    def __enter__(self) -> Guest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- hostile page content: one defect each (used by the guest and tool tests) ----


def _put(region: NoxsRegion, offset: int, fmt: str, value: int) -> None:
    struct.pack_into("<" + fmt, region.raw(), offset, value)


def _dev(index: int, field: str) -> int:
    return DevicePage.devs.offset + index * ctypes.sizeof(DevEntry) + getattr(DevEntry, field).offset


_VIF0 = 2 * 4096  # write_config: sysctl at page 1, the first vif at page 2

# id -> (what to break in a region written by write_config(one vif), expected message)
HOSTILE_PAGES: dict[str, tuple[Callable[[NoxsRegion], None], str]] = {
    "bad_magic": (lambda r: _put(r, DevicePage.magic.offset, "I", 0xDEADBEEF), "noxs: bad magic 0xdeadbeef"),
    "zero_page": (lambda r: r.raw().__setitem__(slice(0, 4096), bytes(4096)), "noxs: bad magic 0x00000000"),
    "bad_version": (lambda r: _put(r, DevicePage.abi_version.offset, "H", 99), "noxs: unsupported ABI version 99"),
    "short_header": (lambda r: _put(r, DevicePage.header_size.offset, "H", 100), "noxs: bad header_size 100"),
    "region_too_big": (
        lambda r: _put(r, DevicePage.region_size.offset, "I", 64 * 4096),
        "noxs: region_size 262144 exceeds",
    ),
    "region_not_pow2": (lambda r: _put(r, DevicePage.region_size.offset, "I", 12288), "noxs: bad region_size 12288"),
    "dev_count_zero": (lambda r: _put(r, DevicePage.dev_count.offset, "I", 0), "noxs: bad dev_count 0"),
    "dev_count_huge": (
        lambda r: _put(r, DevicePage.dev_count.offset, "I", 0xFFFFFFFF),
        "noxs: bad dev_count 4294967295",
    ),
    "ctrl_offset_unaligned": (
        lambda r: _put(r, _dev(1, "ctrl_offset"), "I", 4096 + 8),
        "noxs: device 1: bad ctrl_offset",
    ),
    "ctrl_offset_outside": (lambda r: _put(r, _dev(1, "ctrl_offset"), "I", 1 << 30), "noxs: device 1: bad ctrl_offset"),
    "ctrl_offset_zero": (lambda r: _put(r, _dev(0, "ctrl_offset"), "I", 0), "noxs: device 0: bad ctrl_offset"),
    "ctrl_offset_shared": (lambda r: _put(r, _dev(1, "ctrl_offset"), "I", 4096), "share ctrl_offset"),
    "no_sysctl": (lambda r: _put(r, _dev(0, "type"), "I", int(DevType.VBD)), "noxs: 0 sysctl devices"),
    "two_sysctl": (lambda r: _put(r, _dev(1, "type"), "I", int(DevType.SYSCTL)), "noxs: 2 sysctl devices"),
    "unknown_type": (lambda r: _put(r, _dev(1, "type"), "I", 77), "noxs: device 1: unknown type 77"),
    "generation_odd": (lambda r: _put(r, DevicePage.generation.offset, "Q", 7), "noxs: page generation never settles"),
    "vif_bad_mtu": (lambda r: _put(r, _VIF0 + VifCtrl.mtu.offset, "H", 20), "noxs: vif 0: bad MTU 20"),
    "vif_bad_prefix": (lambda r: _put(r, _VIF0 + VifCtrl.prefix.offset, "B", 33), "noxs: vif 0: bad prefix /33"),
    "vif_multicast_mac": (lambda r: _put(r, _VIF0 + VifCtrl.mac.offset, "B", 0x01), "noxs: vif 0: bad MAC"),
}


def hostile_base_config() -> PageConfig:
    """The valid page each hostile case starts from: sysctl + one vif."""
    return PageConfig(name="hostile", vifs=[VifConfig(mac=bytes.fromhex("525400abcdef"), ip="10.9.0.2", prefix=24)])
