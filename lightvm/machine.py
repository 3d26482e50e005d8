"""Machine: owns one QEMU process, after QEMU's own ``QEMUMachine``.

Lifecycle, with the runstate after each step::

    Machine(config)            CREATED
      .launch()                PRELAUNCH   QEMU started paused (-S), QMP connected,
                                           qmp_capabilities queued (not awaited)
      .resume()                RUNNING     `cont`
      .pause() / .resume()     PAUSED / RUNNING
      .shutdown()              SHUTDOWN    QMP `quit`, then SIGKILL; cleanup always

``launch`` is split into ``_pre_launch`` (QMP listening socket, log file),
``_launch`` (spawn) and ``_post_launch`` (connect QMP) like QEMUMachine's hooks.
``Machine.adopt`` wraps a QEMU started by another lightvm process (re-adoption
after a CLI restart): it is identified by PID *and* start time and driven through a
pidfd, so a recycled PID is never signalled.

The QMP socket is created and bound by us and handed to QEMU as a listening fd:
we can connect (and queue ``qmp_capabilities`` and ``cont``) before QEMU has even
finished loading, instead of polling for the socket file to appear.
"""

from __future__ import annotations

import enum
import functools
import itertools
import os
import select
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from lightvm.devices.tapfd import as_fds as as_tap_fds
from lightvm.errors import LaunchError, MachineError, QMPError, StateError
from lightvm.qemubin import build_patches, machine_type, qemu_binary
from lightvm.qmp import QMPClient
from lightvm.util import proc_start_time, qemu_opt_escape, short_unix_path, tail

# $LIGHTVM_QEMU, else the slim build (qemu/build.sh), else Debian's: lightvm/qemubin.py.
QEMU_BINARY = qemu_binary("microvm")
# ioapic2=off: 8 virtio-mmio transports instead of 24, QEMU starts ~2-3 ms sooner (images/base/README.md).
MICROVM = "microvm,pcie=on,ioapic2=off,x-option-roms=off,rtc=off,pic=off"
# With this patch the slim build creates only the virtio-mmio transports a VM's devices need
# (each empty one is ~30 KiB of every QEMU: qemu/patches/microvm-virtio-transports.patch).
TRANSPORTS_PATCH = "microvm-virtio-transports.patch"
DEBUG_EXIT_IOBASE = 0xF4
SMALL_GUEST_MIB = 64  # up to this much RAM, a guest gets a 1 MiB TCG translation cache
# isa-debug-exit turns the guest's write of v into exit status (v << 1) | 1.
EXIT_CLEAN = 1
EXIT_FATAL = 3
# LIGHTVM_KSM=1: every QEMU we start is mergeable by KSM (see ksm_merge_children).
KSM_ENV = "LIGHTVM_KSM"
PR_SET_MEMORY_MERGE = 67  # linux/prctl.h, Linux >= 6.4


class Runstate(enum.Enum):
    CREATED = "created"
    PRELAUNCH = "prelaunch"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"


@dataclass(frozen=True)
class MachineConfig:
    """Everything needed to build one QEMU command line."""

    name: str
    kernel: Path
    memory_mib: int
    vcpus: int
    cmdline: str
    accel: str  # "tcg" or "kvm"
    noxs_path: Path
    noxs_size: int
    console_path: Path
    qmp_path: Path
    log_path: Path
    machine: str = MICROVM
    binary: str = QEMU_BINARY
    extra_args: tuple[str, ...] = field(default=())
    bios: Path | None = None  # e.g. images/build/lvfw.bin; None: QEMU's default firmware
    # The console as a QEMU "pipe" chardev instead of a file: QEMU writes the guest's
    # output to PATH.out and feeds PATH.in (a FIFO) to the UART's receiver. The caller
    # creates both (PATH.out may be a symlink to console_path). A pool shell's guest
    # sleeps until a byte arrives there (lightvm/daemon/pool.py, NOXS_FEAT_CONSOLE_BELL).
    console_pipe: Path | None = None
    initrd: Path | None = None  # a Linux guest's initramfs (lightvm/linux.py)
    tcg_cpu: str | None = None  # -cpu under TCG (None: QEMU's default); KVM always gets the host's
    # The jail's -sandbox/-runas/-chroot (lightvm/jail.py): before -mon, so that the device
    # arguments a checkpoint keeps (mobility/format.py device_args) never carry them.
    jail_args: tuple[str, ...] = field(default=())
    # Guest RAM from a file instead of a memfd (a template's RAM, lightvm/mobility/template.py):
    # share=True maps it MAP_SHARED (the QEMU building a template writes the guest's RAM into
    # it), False MAP_PRIVATE (a VM started from a template: copy-on-write from the page cache).
    ram_path: Path | None = None
    ram_share: bool = False
    # An open fd of that file for QEMU to inherit (ram_path is then /proc/self/fd/N): QEMU maps
    # the very inode lightvm checked, and needs no permission on the file (it opens it before
    # -runas/-chroot, through its own fd table).
    ram_fd: int | None = None


def virtio_mmio_devices(args: Sequence[str]) -> int:
    """How many virtio-mmio devices (``-device virtio-*-device``) an argument list adds."""
    count = 0
    for flag, value in itertools.pairwise(args):
        driver = value.split(",", 1)[0]
        if flag == "-device" and driver.startswith("virtio-") and driver.endswith("-device"):
            count += 1
    return count


def machine_option(config: MachineConfig) -> str:
    """The ``-M`` value: ``config.machine`` with guest RAM from the ``ram`` backend and, on a
    slim build that has the option, exactly as many virtio-mmio transports as devices.

    The count derives from the command line alone, so a template and its clones (same
    devices, same binary) always agree on it, as a migration stream requires.
    """
    value = f"{config.machine},memory-backend=ram"
    if machine_type(config.machine) == "microvm" and TRANSPORTS_PATCH in build_patches(config.binary):
        value += f",x-virtio-transports={virtio_mmio_devices(config.extra_args)}"
    return value


def build_argv(config: MachineConfig, qmp_fd: int) -> list[str]:
    """The QEMU command line for ``config``; ``qmp_fd`` is the inherited listening socket."""
    if config.accel == "kvm":
        accel = ["-accel", "kvm", "-cpu", "host,-arch-capabilities"]
    elif config.accel == "tcg":
        # A unikernel's code is tens of KiB: a 1 MiB translation cache is plenty, stays
        # below huge-page size (no 2 MiB page to zero on the first translation) and saves
        # ~2 MiB of RSS per VM. Bigger guests (Linux) keep QEMU's default.
        small = config.memory_mib <= SMALL_GUEST_MIB
        accel = ["-accel", "tcg,tb-size=1" if small else "tcg", *(["-cpu", config.tcg_cpu] if config.tcg_cpu else [])]
    else:
        raise MachineError(f"unknown accelerator {config.accel!r}; use tcg or kvm")
    # fmt: off
    return [
        config.binary,
        "-name", qemu_opt_escape(config.name),
        "-nodefaults",
        "-no-user-config",
        *config.jail_args,
        "-display", "none",
        # Guest RAM from a memfd: shmem has 4 KiB pages here, while QEMU's default
        # anonymous RAM is madvised to THP and loading the kernel zeroes a 2 MiB page.
        "-M", machine_option(config),
        "-object", f"memory-backend-file,id=ram,mem-path={qemu_opt_escape(str(config.ram_path))},"
                   f"size={config.memory_mib}M,share={'on' if config.ram_share else 'off'}" if config.ram_path
        else f"memory-backend-memfd,id=ram,size={config.memory_mib}M",
        *accel,
        "-m", f"{config.memory_mib}M",
        "-smp", str(config.vcpus),
        *(["-bios", str(config.bios)] if config.bios else []),
        "-kernel", str(config.kernel),
        *(["-initrd", str(config.initrd)] if config.initrd else []),
        "-append", config.cmdline,
        "-object", f"memory-backend-file,id=noxs,mem-path={qemu_opt_escape(str(config.noxs_path))},"
                   f"size={config.noxs_size},share=on",
        # master=on: without it ivshmem blocks migration ("peer mode"); the master migrates
        # the region's content with the guest's RAM (save/restore/migrate: lightvm/mobility/restore.py).
        "-device", "ivshmem-plain,memdev=noxs,master=on",
        "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_IOBASE:#x},iosize=4",
        "-no-reboot",
        "-chardev", f"pipe,id=con,path={qemu_opt_escape(str(config.console_pipe))}" if config.console_pipe
        else f"file,id=con,path={qemu_opt_escape(str(config.console_path))}",
        "-serial", "chardev:con",
        "-chardev", f"socket,id=qmp,fd={qmp_fd},server=on,wait=off",
        "-mon", "chardev=qmp,mode=control",
        *config.extra_args,
        "-S",
    ]
    # fmt: on


@functools.cache
def ksm_merge_children() -> None:
    """Make this process's memory, and that of every process it starts, mergeable by KSM.

    Why: an idle VM's QEMU is mostly memory that is the same in every QEMU (a zeroed
    2 MiB TCG hash table, zero-filled buffers, identical heap objects). With KSM running
    (``echo 1 > /sys/kernel/mm/ksm/run``, the operator's choice: ksmd costs CPU) 50 idle
    daytime VMs measured Pss 8.6 -> 4.8 MiB each (lightvm/bench/README.md). QEMU's own
    ``-machine mem-merge`` covers guest RAM only, which is a shared memfd here and so never
    merged. ``PR_SET_MEMORY_MERGE`` marks the whole process and is inherited across fork
    and exec (Linux >= 6.7), so it is set once on the spawning process; without
    preexec_fn, whose cost (no vfork) every launch would pay.

    :raise LaunchError: the kernel refuses (older than 6.4, or KSM not built in).
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise LaunchError(
            f"{KSM_ENV}=1: prctl(PR_SET_MEMORY_MERGE) failed ({os.strerror(err)}); it needs Linux >= 6.4 "
            f"with KSM; unset {KSM_ENV}"
        )


def spawn_setup(environ: dict[str, str] | None = None) -> None:
    """What the environment asks of every QEMU launch, done once in this process."""
    if (os.environ if environ is None else environ).get(KSM_ENV) == "1":
        ksm_merge_children()


P = ParamSpec("P")
R = TypeVar("R")


def require(
    *states: Runstate,
) -> Callable[[Callable[Concatenate[Machine, P], R]], Callable[Concatenate[Machine, P], R]]:
    """Guard a Machine method: raise StateError unless the runstate is one of ``states``."""

    def decorator(method: Callable[Concatenate[Machine, P], R]) -> Callable[Concatenate[Machine, P], R]:
        @functools.wraps(method)
        def wrapper(self: Machine, /, *args: P.args, **kwargs: P.kwargs) -> R:
            if self.runstate not in states:
                wanted = " or ".join(s.value for s in states)
                raise StateError(
                    f"{self.name}: cannot {method.__name__} a machine that is {self.runstate.value} (needs {wanted})"
                )
            return method(self, *args, **kwargs)

        return wrapper

    return decorator


def _readable(fd: int, timeout: float) -> bool:
    """Whether ``fd`` is readable within ``timeout`` s. poll, not select: select() fails
    on descriptors numbered 1024 or more, which a process running many VMs reaches."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000 + 0.999))))


class ProcessHandle:
    """A process named by PID and start time, watched through a pidfd."""

    def __init__(self, pid: int, start_time: int | None, popen: subprocess.Popen[bytes] | None = None) -> None:
        self.pid = pid
        self.start_time = start_time
        self.popen = popen
        self.returncode: int | None = None
        self._pidfd: int | None = None
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = None  # already gone (or pidfd unsupported; then we fall back to /proc)
        if fd is not None and popen is None and start_time is not None and proc_start_time(pid) != start_time:
            os.close(fd)  # the PID was recycled: this is not our process
            fd = None
            self.returncode = -1
        self._pidfd = fd

    def alive(self) -> bool:
        if self.returncode is not None:
            return False
        if self._pidfd is not None:
            if _readable(self._pidfd, 0):
                self._reap()
                return False
            return True
        return proc_start_time(self.pid) == self.start_time if self.start_time is not None else False

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the process to exit; True if it has."""
        if not self.alive():
            return True
        if self._pidfd is not None:
            if _readable(self._pidfd, timeout):
                self._reap()
                return True
            return False
        if self.popen is not None:
            try:
                self.returncode = self.popen.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        return not self.alive()

    def send_signal(self, sig: int) -> None:
        if self.returncode is not None:
            return
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            elif self.popen is not None:
                self.popen.send_signal(sig)
        except ProcessLookupError:
            pass

    def _reap(self) -> None:
        if self.popen is not None:
            try:
                self.returncode = self.popen.wait(1.0)
            except subprocess.TimeoutExpired:
                self.returncode = -1
        else:
            # Not our child (usually): its parent reaps it. If it was our child, reap it here.
            try:
                _, status = os.waitpid(self.pid, os.WNOHANG)
                self.returncode = os.waitstatus_to_exitcode(status) if status else -1
            except ChildProcessError:
                self.returncode = -1
        self.close()

    def close(self) -> None:
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None


class Machine:
    """One QEMU process. A context manager: leaving the block always shuts it down.

    :raise LaunchError: from :meth:`launch`, carrying argv, exit code and log tail.
    """

    def __init__(self, config: MachineConfig) -> None:
        self.config = config
        self.name = config.name
        self.runstate = Runstate.CREATED
        self.argv: list[str] = []
        self.process: ProcessHandle | None = None
        self._qmp: QMPClient | None = None
        self._listener: socket.socket | None = None
        self._log: int | None = None
        self._owns_socket = True

    # -- construction for a QEMU that already runs --

    @classmethod
    def adopt(cls, config: MachineConfig, pid: int, start_time: int | None, paused: bool) -> Machine:
        """Wrap a running QEMU started by another lightvm process.

        :raise StateError: if that process is gone (or its PID now names another process).
        """
        machine = cls(config)
        handle = ProcessHandle(pid, start_time)
        if not handle.alive():
            handle.close()
            raise StateError(f"{config.name}: QEMU (pid {pid}) is not running")
        machine.process = handle
        machine.runstate = Runstate.PAUSED if paused else Runstate.RUNNING
        return machine

    # -- launch --

    @require(Runstate.CREATED)
    def launch(self) -> None:
        """Start QEMU paused and connect QMP (``qmp_capabilities`` queued, not awaited).

        :raise LaunchError: if QEMU cannot be spawned or the QMP socket cannot be used.
        """
        try:
            self._pre_launch()
            self._launch()
            self._post_launch()
        except BaseException as exc:
            exited = False
            if isinstance(exc, Exception) and self.process is not None:
                # QEMU failing on its own (bad option, no memory) exits within moments:
                # give it that moment so the error carries its exit code and words.
                exited = self.process.wait(0.5)
            self._cleanup(kill=True)
            self.runstate = Runstate.SHUTDOWN
            if isinstance(exc, LaunchError) or not isinstance(exc, Exception):
                raise
            if exited:
                raise self.launch_error("QEMU exited while starting") from exc
            raise self.launch_error(f"QEMU launch failed: {exc}") from exc
        self.runstate = Runstate.PRELAUNCH

    def _pre_launch(self) -> None:
        path = self.config.qmp_path
        path.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        address, dirfd = short_unix_path(path)
        try:
            listener.bind(address)
            listener.listen(4)
        except OSError as exc:
            listener.close()
            raise LaunchError(f"cannot create QMP socket {path}: {exc.strerror or exc}") from exc
        finally:
            if dirfd is not None:
                os.close(dirfd)
        self._listener = listener
        self._log = os.open(self.config.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)

    def _launch(self) -> None:
        assert self._listener is not None and self._log is not None
        fd = self._listener.fileno()
        self.argv = build_argv(self.config, fd)
        spawn_setup()
        # Taps as open fds (lightvm/devices/tapfd.py): QEMU needs no privilege for them.
        # self.argv keeps ifname= (what a record and a checkpoint rebuild from).
        try:
            argv, taps = as_tap_fds(self.argv)
        except OSError as exc:
            raise LaunchError(f"cannot open a tap for QEMU: {exc.strerror or exc}") from exc
        try:
            # No preexec_fn: it would forbid vfork and cost a millisecond per spawn. A new
            # session keeps the VM out of the terminal's process group (Ctrl-C of the CLI
            # must not kill VMs it created); stdout/stderr go to a file so that nothing
            # waiting on the CLI's pipes waits for the VM too.
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=self._log,
                pass_fds=(fd, *taps, *(() if self.config.ram_fd is None else (self.config.ram_fd,))),
                start_new_session=True,
            )
        except OSError as exc:
            raise LaunchError(f"cannot run {self.config.binary}: {exc.strerror or exc}") from exc
        finally:
            for tap in taps:
                os.close(tap)
        self.process = ProcessHandle(popen.pid, proc_start_time(popen.pid), popen)

    def _post_launch(self) -> None:
        assert self._listener is not None
        # Our listener accepted the connection into its backlog already; QEMU accepts
        # it when its monitor thread starts. Queue qmp_capabilities right away.
        self._qmp = QMPClient.connect(self.config.qmp_path, timeout=2.0)
        self._listener.close()
        self._listener = None
        self._qmp.send_negotiate()

    def launch_error(self, message: str) -> LaunchError:
        """A LaunchError carrying argv, exit code and the tail of QEMU's log."""
        code = self.process.returncode if self.process else None
        log = tail(self.config.log_path, 600)
        said = log.splitlines()[-1] if log else "(nothing)"
        err = LaunchError(f"{message} (exit code {code}): {said}")
        err.argv = self.argv  # type: ignore[attr-defined]
        err.exitcode = code  # type: ignore[attr-defined]
        err.log = log  # type: ignore[attr-defined]
        return err

    # -- QMP --

    @property
    def qmp(self) -> QMPClient:
        """The QMP connection, connected on first use for adopted machines.

        :raise QMPError: if QEMU does not answer.
        """
        if self._qmp is None:
            client = QMPClient.connect(self.config.qmp_path, timeout=2.0)
            try:
                client.negotiate(timeout=2.0)
            except BaseException:
                client.close()
                raise
            self._qmp = client
        return self._qmp

    def disconnect(self) -> None:
        """Close our QMP connection (QEMU serves one client at a time)."""
        if self._qmp is not None:
            self._qmp.close()
            self._qmp = None

    def is_running(self) -> bool:
        return self.process is not None and self.process.alive()

    @property
    def exitcode(self) -> int | None:
        return self.process.returncode if self.process else None

    # -- lifecycle --

    @require(Runstate.PRELAUNCH, Runstate.PAUSED)
    def resume(self, wait: bool = True, timeout: float = 5.0) -> int:
        """Send ``cont``. With ``wait=False`` return at once with the command id
        (a fast guest may exit QEMU before the reply comes).

        :raise QMPError: if ``cont`` fails (only when waiting).
        """
        cmd_id = self.qmp.send("cont")
        self.runstate = Runstate.RUNNING
        if wait:
            self.qmp.wait(cmd_id, timeout, "cont")
        return cmd_id

    @require(Runstate.RUNNING)
    def pause(self, timeout: float = 5.0) -> None:
        """Stop the vCPUs (QMP ``stop``).

        :raise QMPError: if QEMU refuses or does not answer.
        """
        self.qmp.execute("stop", timeout=timeout)
        self.runstate = Runstate.PAUSED

    def query_status(self, timeout: float = 2.0) -> str:
        """QEMU's own runstate name (``running``, ``paused``, ``prelaunch``, ...).

        :raise QMPError: if QEMU does not answer.
        """
        result = self.qmp.execute("query-status", timeout=timeout)
        return str(result.get("status", "unknown")) if isinstance(result, dict) else "unknown"

    def shutdown(self, timeout: float = 3.0, hard: bool = False) -> None:
        """Stop QEMU: QMP ``quit`` (unless ``hard``), then SIGKILL; always clean up.

        Never raises for a QEMU that is already gone. Idempotent.
        """
        if self.runstate is Runstate.SHUTDOWN:
            return
        try:
            if not hard and self.is_running():
                try:
                    self.qmp.send("quit")
                    assert self.process is not None
                    self.process.wait(timeout)
                except (QMPError, OSError):
                    pass  # QMP gone or busy: fall through to SIGKILL
        finally:
            self._cleanup(kill=True)
            self.runstate = Runstate.SHUTDOWN

    def kill(self) -> None:
        """SIGKILL QEMU at once and clean up."""
        self.shutdown(hard=True)

    def wait(self, timeout: float) -> bool:
        """Wait for QEMU to exit by itself (e.g. guest poweroff); True if it did."""
        return self.process is None or self.process.wait(timeout)

    def _cleanup(self, kill: bool) -> None:
        self.disconnect()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self.process is not None:
            if kill and self.process.alive():
                self.process.send_signal(signal.SIGKILL)
                self.process.wait(5.0)
            self.process.close()
        if self._log is not None:
            os.close(self._log)
            self._log = None
        if self._owns_socket:
            self.config.qmp_path.unlink(missing_ok=True)

    def release(self) -> None:
        """Let go of a launched QEMU without stopping it (it outlives this process)."""
        self.disconnect()
        if self._log is not None:
            os.close(self._log)
            self._log = None
        if self.process is not None:
            self.process.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
