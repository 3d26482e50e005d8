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

Why not a command line of its own: the guests are tested under the product's
(``lightvm.machine.build_argv``) and QMP is the product's client (``lightvm.qmp``),
so a test passes only for what lightvm really runs. :func:`qemu_argv` lists the
few things a test may leave out of it (the NoXS device, the debug-exit device, QMP,
``-S``).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from lightvm.machine import MICROVM, MachineConfig, build_argv
from lightvm.noxs import (
    PAGE_SIZE,
    BootRecord,
    BootState,
    DevEntry,
    DevicePage,
    DevType,
    NoxsRegion,
    PageConfig,
    Sysctl,
    SysctlCtrl,
    VifConfig,
    VifCtrl,
    XenbusState,
)
from lightvm.qemubin import qemu_binary
from lightvm.qmp import QMPClient

REPO = Path(__file__).resolve().parent.parent
IMAGES_DIR = REPO / "images"
BUILD_DIR = IMAGES_DIR / "build"
QEMU = qemu_binary("microvm")  # for MACHINE; qemu_argv picks per machine (lightvm/qemubin.py)
SHM_PREFIX = "lvtest-"

# QEMU exit statuses of our guests (isa-debug-exit: status = value << 1 | 1).
EXIT_POWEROFF = 1  # guest_poweroff(): clean
EXIT_FATAL = 3  # guest_fatal()
EXIT_TRIPLE_FAULT = 0  # -no-reboot and the guest reset itself

MACHINE = MICROVM  # the product's microvm options (lightvm/machine.py)
ACCEL = "tcg"  # build_argv gives a small guest a 1 MiB translation cache
QMP_TIMEOUT_S = 10.0
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


def _drop(argv: list[str], option: str, value_prefix: str | None = None) -> None:
    """Remove the first ``option`` (with its value when ``value_prefix`` is given) from ``argv``."""
    for i, arg in enumerate(argv):
        if arg != option:
            continue
        if value_prefix is None:
            del argv[i]
            return
        if i + 1 < len(argv) and argv[i + 1].startswith(value_prefix):
            del argv[i : i + 2]
            return
    raise AssertionError(f"build_argv has no {option} {value_prefix or ''}: {argv}")


def memory_mib(memory: str) -> int:
    """QEMU's ``-m`` as the tests spell it (``4M``) in MiB."""
    return int(memory.removesuffix("M"))


def qemu_argv(
    kernel: Path,
    region_path: Path | None,
    region_size: int,
    *,
    console: str | Path,
    memory: str = "4M",
    machine: str = MACHINE,
    firmware: Path | None = FIRMWARE,
    accel: str = ACCEL,
    debug_exit: bool = True,
    qmp_fd: int | None = None,
    paused: bool = False,
    extra: Sequence[str] = (),
    console_pipe: Path | None = None,
) -> list[str]:
    """The product's QEMU command line (``lightvm.machine.build_argv``) for one test guest.

    What a test may leave out of it: the NoXS device (``region_path=None``), the
    debug-exit device (``debug_exit=False``), QMP (``qmp_fd=None``; else the inherited
    listening socket) and ``-S`` (``paused=False``: the guest runs at once).
    ``console`` is the console log's path (a ``file:`` prefix is accepted). ``-append``
    in ``extra`` becomes the kernel command line. ``firmware=None`` keeps QEMU's
    default firmware (SeaBIOS). ``console_pipe``: the console as lightvm's pipe chardev
    (MachineConfig.console_pipe: the caller made PATH.in, a FIFO, and PATH.out).
    """
    extra = list(extra)
    cmdline = ""
    if "-append" in extra:
        i = extra.index("-append")
        cmdline = extra[i + 1]
        del extra[i : i + 2]
    console_path = Path(str(console).removeprefix("file:"))
    config = MachineConfig(
        name=Path(kernel).stem,
        kernel=Path(kernel),
        memory_mib=memory_mib(memory),
        vcpus=1,
        cmdline=cmdline,
        accel=accel,
        noxs_path=region_path if region_path is not None else Path("/dev/null"),
        noxs_size=region_size,
        console_path=console_path,
        qmp_path=console_path.with_name("qmp.sock"),
        log_path=console_path.with_name("qemu.log"),
        machine=machine,
        binary=qemu_binary(machine),
        bios=firmware,
        console_pipe=console_pipe,
        extra_args=tuple(extra),  # where build_argv puts devices (and counts virtio-mmio transports)
    )
    argv = build_argv(config, qmp_fd if qmp_fd is not None else -1)
    if region_path is None:
        _drop(argv, "-object", "memory-backend-file,id=noxs,")
        _drop(argv, "-device", "ivshmem-plain,memdev=noxs,")
    if not debug_exit:  # the guest's poweroff: exit status 1 clean, 3 fatal
        _drop(argv, "-device", "isa-debug-exit,")
    if qmp_fd is None:
        _drop(argv, "-chardev", "socket,id=qmp,")
        _drop(argv, "-mon", "chardev=qmp,")
    if not cmdline:  # the same to a guest; and QEMU refuses -append without -kernel, which a test leaves out
        _drop(argv, "-append", "")
    assert argv[-1] == "-S"
    if not paused:
        del argv[-1]
    return argv


def qmp_listener(path: Path) -> socket.socket:
    """A listening QMP socket at ``path`` for QEMU to inherit, as lightvm.machine does."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
        listener.listen(4)
    except BaseException:
        listener.close()
        raise
    return listener


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
        console_bell: bool = False,
    ) -> None:
        """``console_bell``: the console's input is a FIFO the test writes with :meth:`ring`
        (a pool shell's NOXS_FEAT_CONSOLE_BELL, as lightvm.instance sets it up); the output
        still lands in the console log."""
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
        self.console_pipe: Path | None = None
        self._bell: int | None = None
        if console_bell:
            self.console_pipe = Path(self._tmp.name) / "console"
            self.console_path.touch()
            self.console_pipe.with_suffix(".out").symlink_to(self.console_path.name)
            os.mkfifo(self.console_pipe.with_suffix(".in"), 0o600)
        self.region: NoxsRegion | None = None
        if region:
            try:
                self.region = NoxsRegion.create(Path("/dev/shm") / tag, device_count)
            except BaseException:
                self._tmp.cleanup()
                raise
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QMPClient | None = None
        self.argv: list[str] = []
        self.resumed_at: float | None = None  # time.time() at cont
        self.ready_at: float | None = None  # time.time() when wait_boot_state saw READY

    # -- setup --

    def write_config(self, config: PageConfig) -> None:
        assert self.region is not None
        self.region.write_config(config)

    def launch(self, *, paused: bool = False) -> None:
        """Start QEMU (paused with ``-S`` if asked; then call :meth:`cont`)."""
        listener = qmp_listener(self.qmp_path) if (self.want_qmp or paused) else None
        try:
            self.argv = qemu_argv(
                self.kernel,
                self.region.path if self.region else None,
                self.region.size if self.region else 0,
                console=self.console_path,
                memory=self.memory,
                machine=self.machine,
                firmware=self.firmware,
                accel=self.accel,
                debug_exit=self.debug_exit,
                qmp_fd=listener.fileno() if listener else None,
                paused=paused,
                extra=self.extra_args,
                console_pipe=self.console_pipe,
            )
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                pass_fds=(listener.fileno(),) if listener else (),
            )
            if listener is not None:
                self.qmp = QMPClient.connect(self.qmp_path, timeout=QMP_TIMEOUT_S)
                self.qmp.negotiate(timeout=QMP_TIMEOUT_S)
        finally:
            if listener is not None:
                listener.close()

    def cont(self) -> None:
        """Resume a paused guest; does not wait for the reply (the guest may exit first).

        The NoXS page's host time is stamped again first, so the guest's wall clock does not
        start behind by however long the test spent while it was paused."""
        assert self.qmp is not None
        if self.region is not None:
            self.region.stamp_host_time()
        self.resumed_at = time.time()
        self.qmp.send("cont")

    def ring(self, byte: bytes = b"\n") -> None:
        """Write ``byte`` to the console's input (needs ``console_bell=True``, QEMU running)."""
        assert self.console_pipe is not None
        if self._bell is None:
            # QEMU holds the FIFO open for reading: this open neither blocks nor fails.
            self._bell = os.open(self.console_pipe.with_suffix(".in"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.write(self._bell, byte)

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
                if state == BootState.READY:
                    self.ready_at = time.time()
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
        """Wait until the console log contains ``text`` in a complete line (the guest writes
        its console byte by byte: a line read mid-write lacks its end); return the whole log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.console()
            at = log.find(text)
            if at >= 0 and "\n" in log[at + len(text) - 1 :]:
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

    def power_off_cleanly(self, devices: int, timeout: float = 30.0) -> BootRecord:
        """Ask for POWEROFF through the sysctl page and check the whole clean path: QEMU
        exits with the guest's poweroff status, the boot record says HALTED, every one of
        the ``devices`` frontends (sysctl first) is CLOSED and the guest acknowledged the
        request in ``status_ack``. Returns the final boot record."""
        assert self.region is not None
        self.region.request(Sysctl.POWEROFF)
        assert self.wait_exit(timeout=timeout) == EXIT_POWEROFF, self.console()
        record = self.boot_record()
        assert record.state == BootState.HALTED, record
        for index in range(devices):
            assert self.region.frontend_state(index) == XenbusState.CLOSED, index
        ack_at = PAGE_SIZE + SysctlCtrl.status_ack.offset  # the sysctl control page is page 1
        assert int.from_bytes(self.region.raw()[ack_at : ack_at + 4], "little") & Sysctl.POWEROFF
        return record

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
        if self._bell is not None:
            os.close(self._bell)
            self._bell = None
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


VIF0_PAGE = 2 * PAGE_SIZE  # write_config: sysctl at page 1, the first vif at page 2


def vif0_counter(raw: bytes | bytearray | memoryview, name: str) -> int:
    """Vif 0's counter ``name`` (a VifCtrl field: rx_packets, tx_packets), as the guest keeps
    it in a NoXS region's bytes (a Guest's ``region.raw()``, or a VM's NoXS file)."""
    offset = VIF0_PAGE + getattr(VifCtrl, name).offset
    return int.from_bytes(raw[offset : offset + 8], "little")


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
    "vif_bad_mtu": (lambda r: _put(r, VIF0_PAGE + VifCtrl.mtu.offset, "H", 20), "noxs: vif 0: bad MTU 20"),
    "vif_bad_prefix": (lambda r: _put(r, VIF0_PAGE + VifCtrl.prefix.offset, "B", 33), "noxs: vif 0: bad prefix /33"),
    "vif_multicast_mac": (lambda r: _put(r, VIF0_PAGE + VifCtrl.mac.offset, "B", 0x01), "noxs: vif 0: bad MAC"),
    "vif_multicast_dev_mac": (
        lambda r: _put(r, VIF0_PAGE + VifCtrl.dev_mac.offset, "B", 0x01),
        "noxs: vif 0: bad dev_mac",
    ),
}


def hostile_base_config() -> PageConfig:
    """The valid page each hostile case starts from: sysctl + one vif."""
    return PageConfig(name="hostile", vifs=[VifConfig(mac=bytes.fromhex("525400abcdef"), ip="10.9.0.2", prefix=24)])
