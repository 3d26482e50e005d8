"""One VM instance's lifecycle: its folder, record, NoXS region, QEMU configuration and QEMU.

Every QEMU lightvm starts comes up here, in one order: a cold create
(lightvm/toolstack.py), a restore or the receiving end of a migration
(lightvm/mobility/restore.py), and the shells lightvmd prepares ahead of time, for
creates (lightvm/daemon/pool.py) and for restores (lightvm/daemon/restore_pool.py).
The order keeps a kill -9 at any point cleanable (lightvm/state.py):

1. the folder and its ``creating`` marker (:meth:`StateDir.allocate`, all names under
   the state lock; or :func:`spawn_shell`'s own folder in ``STATE/pool``)
2. the record, naming the NoXS file before the file exists (:meth:`Instance.create_region`)
3. the NoXS file
4. the devices' host side (taps, leases, disks), recorded with the next write
   (:meth:`Instance.prepare_devices`; until then ``vifs_pending`` in the record makes
   destroy look for the VM's taps by name)
5. QEMU, launched paused; its PID, start time and argv recorded at once (:meth:`Instance.launch`)

Each step pushes its undo onto the instance's :class:`~lightvm.undo.UndoStack`;
:meth:`Instance.abort` unwinds them, then removes whatever else the folder names
(:func:`destroy`). What a killed process leaves is a folder that :func:`destroy` cleans
(``lightvm destroy`` for a VM, the daemon's start-up for a shell): its QEMU is found by
the recorded PID, else by the NoXS path on its command line (:func:`kill_qemu`).

Also here: the one translation of a record into a :class:`~lightvm.machine.MachineConfig`
(:func:`machine_config`; :func:`attach` for a QEMU that runs), and :func:`adopt`: a
prepared shell's folder becomes ``vms/NAME`` under the state lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import uuid as uuidlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightvm import cgroups
from lightvm import jail as jailmod
from lightvm.devices import blk
from lightvm.errors import ExistsError, GuestError, LightVMError, StateError
from lightvm.logs import INFO, log
from lightvm.machine import MICROVM, Machine, MachineConfig, ProcessHandle
from lightvm.noxs import NoxsRegion, VbdConfig, VifConfig, region_size_for
from lightvm.state import StateDir, VMDir, VMRecord
from lightvm.undo import UndoStack
from lightvm.util import atomic_write, find_processes_with_arg, proc_cmdline, proc_start_time

if TYPE_CHECKING:
    from lightvm.spec import VMSpec

# A context manager factory to launch QEMU in: inside devd's network namespace when the
# VM's taps were made there (a tap is opened from the namespace it lives in).
NetNamespace = Callable[[], contextlib.AbstractContextManager[None]]

RENAME_HINT = "; pick another --name"


def machine_config(vmdir: VMDir, record: VMRecord, **changes: Any) -> MachineConfig:
    """The QEMU configuration of ``record``'s VM in ``vmdir``: the one place where a
    record's spec (kernel, memory, vCPUs, command line, firmware) becomes a MachineConfig.
    ``changes`` set other fields (device arguments, QEMU's ``-name``, a console pipe)."""
    spec = record.spec
    firmware = spec.get("firmware")
    fields: dict[str, Any] = {
        "name": record.name,
        "kernel": Path(spec.get("kernel", "")),
        "memory_mib": int(spec.get("memory", 0)),
        "vcpus": int(spec.get("vcpus", 1)),
        "cmdline": str(spec.get("cmdline", "")),
        "accel": record.accel,
        "noxs_path": Path(record.noxs_path),
        "noxs_size": record.noxs_size,
        "console_path": vmdir.console_path,
        "qmp_path": vmdir.qmp_path,
        "log_path": vmdir.log_path,
        "bios": Path(firmware) if firmware else None,
    }
    if spec.get("initrd"):  # a Linux guest: its machine string and command line (lightvm/linux.py)
        from lightvm import hostfacts, linux

        tsc_hz = hostfacts.tsc_hz() if record.accel == "tcg" else 0
        fields["initrd"] = Path(spec["initrd"])
        fields["machine"] = linux.linux_machine(MICROVM)
        fields["cmdline"] = linux.linux_cmdline(fields["cmdline"], tsc_hz)
        fields["tcg_cpu"] = linux.LINUX_TCG_CPU
    fields.update(changes)
    return MachineConfig(**fields)


def attach(vmdir: VMDir, record: VMRecord, paused: bool) -> Machine:
    """The running QEMU of ``record``'s VM (QMP connects on first use; ``release()`` lets go).

    :raise StateError: it is not running (or its PID now names another process).
    """
    return Machine.adopt(machine_config(vmdir, record), record.pid or 0, record.pid_start, paused=paused)


class Instance:
    """One VM (or shell) coming up: folder, record, NoXS region, QEMU, and the undo of
    each step taken. ``step`` names the step under way, for the error a failure raises."""

    def __init__(self, vmdir: VMDir, record: VMRecord, state_root: Path | None = None) -> None:
        self.vmdir = vmdir
        self.record = record
        self.state_root = state_root  # whose networks the vifs use (None: no host-side devices)
        self.region: NoxsRegion | None = None
        self.machine: Machine | None = None
        self.undo = UndoStack()
        self._step = "record state"  # the first step, logged as such by the create

    @property
    def step(self) -> str:
        """The step under way (named in the error a failure raises; logged at INFO: ``lightvm -v``)."""
        return self._step

    @step.setter
    def step(self, name: str) -> None:
        self._step = name
        log(INFO, "lightvm.toolstack", "%s: %s", self.vmdir.name, name)

    @classmethod
    def of_shell(
        cls, vmdir: VMDir, record: VMRecord, region: NoxsRegion, machine: Machine, state_root: Path | None = None
    ) -> Instance:
        """The instance of a QEMU spawned earlier (a prepared shell): its undo kills the
        QEMU, removes the NoXS file and gives back the jail uid and cgroups the shell's
        launch took under ``record.id`` (a restore shell keeps its id as the VM's)."""
        vm = cls(vmdir, record, state_root)
        vm.region, vm.machine = region, machine
        vm.undo.push("jail uid", lambda: jailmod.release_vm(record.id))
        vm.undo.push("cgroups", lambda: cgroups.release(record.id))  # after the kill: LIFO
        vm.undo.push("NoXS region", region.close)
        vm.undo.push("NoXS file", region.unlink)
        vm.undo.push("QEMU", machine.kill)
        return vm

    # -- the steps, in order --

    def create_region(self, devices: int) -> NoxsRegion:
        """Write the record (it names the NoXS file), then create the file for ``devices``."""
        self.step = "record state"
        self.vmdir.write(self.record)
        self.step = "create NoXS region"
        region = NoxsRegion.create(Path(self.record.noxs_path), devices)
        self.undo.push("NoXS region", region.close)
        self.undo.push("NoXS file", region.unlink)
        self.region = region
        return region

    def prepare_devices(self, spec: VMSpec) -> tuple[list[str], list[VifConfig], list[VbdConfig], NetNamespace]:
        """Make the host side of ``spec``'s vifs and disks (each undo on this instance's
        stack) and put it in the record, written by :meth:`launch`, off the critical path.

        Returns the QEMU args, the NoXS vif and vbd configs, and what to launch QEMU in.
        """
        self.step = "prepare devices"
        args: list[str] = []
        vif_configs: list[VifConfig] = []
        netns: NetNamespace = contextlib.nullcontext
        if spec.vifs:
            args, vif_configs, netns = self._prepare_vifs(spec)
        vbd_configs = []
        disks = []
        for i, disk in enumerate(spec.disks):
            prepared = blk.prepare(disk, i)
            args += blk.qemu_args(prepared)
            vbd_configs.append(blk.noxs_config(prepared))
            disks.append(prepared.to_dict())
        if disks:
            self.record.devices["disks"] = disks
        return args, vif_configs, vbd_configs, netns

    def _prepare_vifs(self, spec: VMSpec) -> tuple[list[str], list[VifConfig], NetNamespace]:
        from lightvm.devices import net  # pyroute2 is slow to import: only when needed

        if self.state_root is None:
            raise LightVMError(f"{self.vmdir.name}: vifs need the state dir their networks live in")
        specs = [net.validate(v, f"vifs[{i}]") for i, v in enumerate(spec.vifs)]
        ctx = net.NetContext.open(self.state_root)
        # The context is closed by the undo (on failure) or by up() (success); the vifs'
        # undo steps, pushed after it, run before it and reopen what they need.
        self.undo.push("network context", ctx.close)
        prepared = net.prepare_all(specs, self.vmdir.name, ctx, self.undo)
        self.record.devices["vifs"] = [p.to_dict() for p in prepared]
        self.record.devices["summary"] = net.summary(prepared)

        @contextlib.contextmanager
        def inside() -> Iterator[None]:
            if ctx.netns is None:
                yield
                return
            with ctx.devd().inside():
                yield

        args = [a for p in prepared for a in net.qemu_args(p, machine="microvm")]
        return args, [net.noxs_config(p) for p in prepared], inside

    def make_shell_nics(self, count: int, mode: str = "tap") -> tuple[list[str], NetNamespace]:
        """A prepared shell's ``count`` NICs and their QEMU args, recorded as its vifs:
        taps of its own (no address, no bridge yet) or user netdevs (no forwards yet),
        lightvm/devices/shellnet.py."""
        from lightvm.devices import net, shellnet  # pyroute2 is slow to import: only when needed

        self.step = "prepare NICs"
        if mode == "user":
            nics = shellnet.user_nics(self.vmdir.name, count)
            self.record.devices["vifs"] = [n.to_dict() for n in nics]
            return [a for n in nics for a in net.qemu_args(n, machine="microvm")], contextlib.nullcontext
        if self.state_root is None:
            raise LightVMError(f"{self.vmdir.name}: NICs need the state dir their networks live in")
        ctx = net.NetContext.open(self.state_root)
        self.undo.push("network context", ctx.close)
        if ctx.mode is not net.NetMode.TAP:
            raise LightVMError(
                f"{self.vmdir.name}: a shell's NICs are taps; this daemon has {ctx.mode.value} networking"
            )
        taps = shellnet.make_taps(self.vmdir.name, count, ctx, self.undo)
        self.record.devices["vifs"] = [t.to_dict() for t in taps]

        @contextlib.contextmanager
        def inside() -> Iterator[None]:
            with ctx.inside():
                yield

        return [a for t in taps for a in net.qemu_args(t, machine="microvm")], inside

    def launch(
        self, extra_args: Sequence[str] = (), netns: NetNamespace = contextlib.nullcontext, **changes: Any
    ) -> Machine:
        """Launch QEMU paused for the record's spec plus ``extra_args`` (devices,
        ``-incoming defer``) and record its PID, start time and argv at once, with the
        devices prepared before. ``changes``: other MachineConfig fields."""
        self.step = "launch QEMU"
        config = machine_config(self.vmdir, self.record, extra_args=tuple(extra_args), **changes)
        jail = jailmod.allocate(self.record.id, config.binary)
        self.undo.push("jail uid", jail.release)
        if jail.uid is not None:  # undone after the QEMU kill below: a cgroup with tasks stays
            self.undo.push("cgroups", lambda: cgroups.release(self.record.id))
        machine = Machine(dataclasses.replace(config, jail_args=jail.args))
        with netns():
            machine.launch()
        self.undo.push("QEMU", machine.kill)
        self.machine = machine
        assert machine.process is not None
        try:
            jail.hand_to(machine.process.pid, machine.process.start_time)
        except StateError:  # a destroy of this very VM ran meanwhile (destroy --all)
            raise StateError(f"{self.vmdir.name}: destroyed while it was being created") from None
        if jail.uid is not None:  # the full jail: its cgroup limits too, before the guest runs (lightvm/cgroups.py)
            cgroups.confine(self.record.id, machine.process.pid, int(self.record.spec.get("memory", 0)))
        # QEMU is initialising now (~20 ms); the host-side bookkeeping runs meanwhile.
        record = self.record
        record.pid, record.pid_start, record.argv = machine.process.pid, machine.process.start_time, machine.argv
        record.devices.pop("vifs_pending", None)  # the vifs are in this very write
        self.vmdir.write(record)
        return machine

    def up(self, state: str, boot_ms: dict[str, float | None], gone_ok: bool = False) -> None:
        """The VM runs: record ``state`` and ``boot_ms``, drop the ``creating`` marker and
        let go of QEMU, the region and the network context (the VM outlives this process).
        Nothing is undone from here on. ``gone_ok``: a folder that cannot be written
        (destroyed meanwhile, after a reply that came before this) is not an error.

        :raise OSError: the record cannot be written (nothing is let go: the caller aborts).
        """
        assert self.machine is not None and self.region is not None
        self.step = "record state"
        self.record.state = state
        self.record.boot_ms = boot_ms
        try:
            self.vmdir.write(self.record)
            self.vmdir.mark_created()
        except OSError:
            if not gone_ok:
                raise
        self.machine.release()
        self.region.close()
        self.undo.run_only("network context")
        self.undo.commit()

    # -- failure --

    def abort(self) -> None:
        """Undo every step taken (newest first), then remove whatever else the folder names."""
        self.undo.unwind()
        with contextlib.suppress(Exception):  # a cleanup must not hide the original failure
            destroy(self.vmdir, self.state_root, hard=True)

    @contextlib.contextmanager
    def steps(self, where: str | None, keep: tuple[type[BaseException], ...] = (GuestError,)) -> Iterator[Instance]:
        """Run the block's steps; if one fails, :meth:`abort` and raise its error with
        ``WHERE: STEP:`` in front (a LightVMError or OSError; those of the types ``keep``,
        and every error when ``where`` is None, go up as they are)."""
        try:
            yield self
        except BaseException as exc:
            self.abort()
            if where is None or isinstance(exc, keep) or not isinstance(exc, (LightVMError, OSError)):
                raise
            message = f"{where}: {self.step}: {exc}"
            named: LightVMError | None = None
            if isinstance(exc, LightVMError):
                with contextlib.suppress(TypeError):  # a subclass with another constructor
                    named = type(exc)(message)
            raise (named or LightVMError(message)) from exc


# ---------------------------------------------------------------------- shells


def spawn_shell(
    root: Path,
    spec: dict[str, Any],
    accel: str,
    devices: int,
    extra_args: tuple[str, ...] = (),
    timeout: float = 10.0,
    console_bell: bool = False,
    then: Callable[[Instance], None] | None = None,
    nics: int = 0,
    state_root: Path | None = None,
    nic_mode: str = "tap",
    disks: tuple[bool, ...] = (),
    launch: dict[str, Any] | None = None,
) -> Instance:
    """Spawn one shell QEMU for the VM ``spec`` (a VMSpec dict) in ``root/ID`` (NoXS
    region for ``devices`` entries), QMP negotiated; its record is named ID.

    Shared by the create pool (paused or waiting shells) and the restore/migration pool
    (``-incoming defer`` shells): the same folder, marker, record and cleanup rules as a
    VM. ``then(instance)`` runs last, inside the cleanup (its steps may push undo on
    ``instance.undo``): if it raises, nothing is left behind either. ``console_bell``:
    the console is a pipe chardev whose input is the FIFO ``console.in`` (output still
    goes to console.log, through the symlink ``console.out``), so the guest can be woken
    by a byte. ``nics``: that many virtio-net devices (lightvm/devices/shellnet.py),
    ``nic_mode`` ``tap`` (taps of the shell's own, made in ``state_root``'s networking
    context) or ``user`` (QEMU user networking), recorded as the shell's ``vifs``.
    ``disks``: that many virtio-blk devices on placeholders (True: read-only),
    lightvm/devices/shellblk.py. ``launch``: other MachineConfig fields (a template's RAM
    file, lightvm/mobility/template.py).

    :raise LightVMError: QEMU could not be started, or ``then`` failed.
    """
    shell_id = uuidlib.uuid4().hex[:16]
    folder = root / shell_id
    folder.mkdir(mode=0o700, parents=True)
    vm = Instance(
        VMDir(folder), VMRecord.new(shell_id, shell_id, "", accel, region_size_for(devices), spec), state_root
    )
    with vm.steps(None):
        # The marker names this process: once the folder moves to vms/, the VM lists as
        # "creating" while it lives and "incomplete" if it was killed mid-execute.
        pid = os.getpid()
        atomic_write(vm.vmdir.creating_path, json.dumps({"pid": pid, "start": proc_start_time(pid)}))
        vm.create_region(devices)
        pipe = make_console_pipe(vm.vmdir) if console_bell else None
        args, netns = vm.make_shell_nics(nics, nic_mode) if nics else ([], contextlib.nullcontext)
        if disks:
            from lightvm.devices import shellblk

            args = [*args, *shellblk.shell_args(disks)]
        machine = vm.launch((*extra_args, *args), netns, name=f"pool-{shell_id}", console_pipe=pipe, **(launch or {}))
        if nics and nic_mode == "tap":
            # Pending again: an execute leases addresses under the VM's name before its
            # record says so (deferred, pool.py), or hands it the shell's own (leased by
            # ``then``, under the shell's id), and a daemon killed in between leaves a
            # folder whose destroy must look for those leases by name and by id.
            vm.record.devices["vifs_pending"] = True
            vm.vmdir.write(vm.record)
        machine.qmp.negotiate(timeout=timeout)  # QEMU initialised: what is left is `cont` / the stream
        if then is not None:
            then(vm)
    vm.undo.run_only("network context")
    return vm


BELL_BYTE = b"\n"  # what a console bell writes (the guest reads its console raw: any byte)


def make_console_pipe(vmdir: VMDir) -> Path:
    """console.log (empty), console.out -> console.log, and the FIFO console.in: what
    QEMU's pipe chardev ``path=FOLDER/console`` opens (MachineConfig.console_pipe)."""
    base = vmdir.path / "console"
    vmdir.console_path.touch(mode=0o600)
    base.with_suffix(".out").symlink_to(vmdir.console_path.name)
    os.mkfifo(base.with_suffix(".in"), 0o600)
    return base


def open_console_bell(pipe: Path) -> int:
    """The write end of the console input FIFO of ``pipe`` (MachineConfig.console_pipe),
    non-blocking: a bell never waits for the guest.

    :raise OSError: no FIFO, or nobody reads it (ENXIO: QEMU is gone).
    """
    return os.open(pipe.with_suffix(".in"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def ring_console_bell(pipe: Path) -> bool:
    """Write one byte into the console input FIFO of ``pipe`` (MachineConfig.console_pipe):
    a Linux guest's init wakes on it at once (tinyx/init/main.c, ``wait_host``) instead of
    at its next poll of the page. Best effort: False when the FIFO is gone or full (QEMU
    exited, or it has not read the last byte yet), and the guest sees the page at its poll.
    """
    try:
        fd = open_console_bell(pipe)
    except OSError:
        return False
    try:
        return os.write(fd, BELL_BYTE) == 1
    except OSError:
        return False
    finally:
        os.close(fd)


def ensure_free(state: StateDir, name: str, hint: str = RENAME_HINT) -> None:
    """:raise ExistsError: a VM ``name`` exists in ``state``."""
    if (state.vms_root / name).exists():
        raise ExistsError(f"a VM named {name!r} already exists in {state.root}{hint}")


def adopt(state: StateDir, folder: Path, name: str, machine: Machine | None = None, hint: str = RENAME_HINT) -> VMDir:
    """Make a prepared shell's ``folder`` that of VM ``name``: rename it to ``vms/NAME``
    under the state lock (its marker and record move with it, in one step: a kill -9
    leaves a shell or a VM folder, never a half-owned one), and point ``machine``'s
    configuration at the new paths.

    :raise ExistsError: the name is taken (the folder stays where it was).
    """
    target = state.vms_root / name
    with state.lock():
        ensure_free(state, name, hint)
        os.rename(folder, target)
    vmdir = VMDir(target)
    if machine is not None:
        pipe = machine.config.console_pipe
        machine.config = dataclasses.replace(
            machine.config,
            console_path=vmdir.console_path,
            qmp_path=vmdir.qmp_path,
            log_path=vmdir.log_path,
            console_pipe=target / pipe.name if pipe is not None else None,
        )
    return vmdir


# ---------------------------------------------------------------------- cleanup


def kill_qemu(vmdir: VMDir, record: VMRecord, hard: bool = False) -> None:
    """Stop the QEMU of ``record``'s VM if it runs: the recorded PID (QMP ``quit`` first,
    unless ``hard``, then SIGKILL); for a PID never recorded (its creator was killed right
    after the spawn), the QEMU with this VM's NoXS path, unique to it, on its command line.
    """
    if record.pid:
        handle = ProcessHandle(record.pid, record.pid_start)
        alive = handle.alive()
        handle.close()
        if alive:
            with contextlib.suppress(StateError):  # it exited meanwhile
                attach(vmdir, record, paused=False).shutdown(timeout=1.0, hard=hard or not vmdir.qmp_path.exists())
        return
    # Only then: the search reads every process's command line, ~25 us a process, so with
    # 400 VMs running it was 10 of the 13 ms of every destroy (lightvm/bench/README.md).
    for pid in unrecorded_qemus(record):
        handle = ProcessHandle(pid, proc_start_time(pid))
        handle.send_signal(signal.SIGKILL)
        handle.wait(5.0)
        handle.close()


def reap_own_child(record: VMRecord) -> None:
    """Reap the VM's QEMU if it is this process's child and has ended: a process that
    created the VM and lives on (``lightvm run``, the Python API, lightvmd's cold path)
    is its parent, and until the parent reaps it the zombie still counts as a task of
    the VM's cgroup, which then cannot be removed (a /bin/true Tinyx VM's cgroups were
    left behind by ``run`` before this). Checked by start time: never another process."""
    if not record.pid or record.pid_start is None or proc_start_time(record.pid) != record.pid_start:
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(record.pid, os.WNOHANG)


def unrecorded_qemus(record: VMRecord) -> list[int]:
    """The PIDs of QEMUs started with ``record``'s NoXS path (unique to the VM) on their
    command line: how a QEMU whose PID was never recorded is found (a create killed right
    after the spawn). Reads every process's command line: only for such records."""
    found = []
    for pid in find_processes_with_arg(f"mem-path={record.noxs_path},"):
        argv = proc_cmdline(pid)
        if argv and "qemu" in os.path.basename(argv[0]):
            found.append(pid)
    return found


DESTROYING = "destroying"  # marker file in a VM's folder: its destroy has begun


def destroy(vmdir: VMDir, state_root: Path | None, hard: bool = False) -> None:
    """Stop the QEMU of the VM (or shell) in ``vmdir`` and remove every trace of it: its
    vifs' host side (looked up in ``state_root``), NoXS file, QMP socket and folder.
    Works for every status, also on what a killed create, restore or daemon left."""
    try:
        record = vmdir.read()
    except StateError:
        record = None
    # A create that never finished (killed, or still running) may have been killed while it
    # claimed a jail uid: its claim file, named after it, is found by no record (the sweep
    # takes only a dead claimer's; one scan of the jail's uids, on this rare path only).
    unfinished = vmdir.creating_path.exists()
    if record is not None:
        # Before the kill: a lightvmd watching this QEMU then tells a destroy by another
        # process (a one-shot destroy, save, migrate) from a crash (daemon/server.py).
        with contextlib.suppress(OSError):
            (vmdir.path / DESTROYING).touch()
        kill_qemu(vmdir, record, hard)
        reap_own_child(record)
        # By the VM's id, not the -runas on its command line: if its QEMU died, its uid may
        # have been taken over since by another VM (lightvm/jail.py: stale markers).
        jailmod.release_vm(record.id)
        cgroups.release(record.id)
        if state_root is not None and (record.devices.get("vifs") or record.devices.get("vifs_pending")):
            release_vifs(state_root, vmdir.name, record.devices, record.id)
        Path(record.noxs_path).unlink(missing_ok=True)
    vmdir.qmp_path.unlink(missing_ok=True)
    shutil.rmtree(vmdir.path, ignore_errors=True)
    if unfinished:
        jailmod.sweep_stale()


def release_vifs(state_root: Path, vm_name: str, devices: dict[str, Any], vm_id: str = "") -> None:
    """Undo the host side of a VM's vifs as recorded in its ``devices``. ``vm_id``: the
    record's id, under which a pooled VM's leases may still be while its vifs are
    pending (its shell leased them at prepare, and the execute hands them to the VM's
    name only after its reply: lightvm/daemon/pool_nics.py)."""
    saved = devices.get("vifs") or []
    pending = bool(devices.get("vifs_pending"))
    if not pending and all(v.get("mode") == "user" for v in saved):
        return  # user networking: nothing on the host to undo
    from lightvm.devices import net

    with net.NetContext.open(state_root) as ctx:
        for data in saved:
            with contextlib.suppress(LightVMError):
                net.release(net.PreparedVif.from_dict(data), vm_name, ctx)
        if pending and vm_id and vm_id != vm_name:  # a pooled VM's leases its shell made (by id)
            with contextlib.suppress(LightVMError):
                ctx.store().release(vm_id, thorough=True)
        if pending:  # the create died before recording its vifs: find them by name (slower)
            with contextlib.suppress(LightVMError):
                net.forget_vm(vm_name, ctx)


__all__ = [
    "Instance",
    "adopt",
    "attach",
    "destroy",
    "ensure_free",
    "kill_qemu",
    "machine_config",
    "release_vifs",
    "spawn_shell",
]
