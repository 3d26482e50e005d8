"""Restore a VM from a checkpoint file (the format: lightvm/mobility/format.py), and the
receiving half every restore and incoming migration shares.

What the stream carries: guest RAM (the memfd backend) *and* the NoXS region (the
ivshmem ``memory-backend-file`` is a RAM block like any other), device state, vCPUs.
So restore needs no guest cooperation. It spawns QEMU with the argv create would
build (same RAM blocks, same devices) plus ``-incoming defer`` and a *fresh* NoXS
file, feeds it the stream with ``migrate-incoming fd:``, then rewrites the host-owned
part of the page from the header (new name/uuid if the VM is renamed, ``host_time_ns``,
generation bumped: the guest re-bases its wall clock) and resumes. The guest's own
boot record (heartbeat, app counter) arrives with the stream and keeps counting.

Restore is split like create: :func:`prepare_incoming` (read the header, allocate the
VM folder, networking, spawn the ``-incoming defer`` QEMU: an
:class:`~lightvm.instance.Instance`, in create's order) or :func:`prepare_from_shell`
(the same from a QEMU lightvmd spawned ahead of time), then
:meth:`PreparedRestore.finish` (the stream, the page, ``cont``, READY). Prepared ahead
of time, the QEMU start is off the critical path. An incoming migration
(lightvm/mobility/receive.py) feeds the stream from the network instead and goes on
with :meth:`PreparedRestore.resume`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightvm.errors import GuestError, LaunchError, LightVMError, NetworkError, QMPError
from lightvm.instance import Instance, NetNamespace, adopt, make_console_pipe, ring_console_bell
from lightvm.machine import Machine
from lightvm.mobility.format import CheckpointError, page_from_json, read_header, read_layout
from lightvm.mobility.stream import VerifiedFeed, wait_incoming
from lightvm.noxs import BootState, DevicePage, NoxsRegion, PageConfig
from lightvm.spec import VMSpec, check_name, parse_spec
from lightvm.state import StateDir, VMDir, VMRecord, VMStatus
from lightvm.toolstack import Toolstack
from lightvm.util import Deadline


@dataclass
class RestoreResult:
    name: str
    id: str
    pid: int
    restore_ms: float  # prepare + finish, as one cold command
    finish_ms: float  # stream in -> page -> cont -> guest running again
    heartbeat: int
    app_counter: int
    paused: bool
    app: str = ""  # the guest's app, from its boot record

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class PreparedRestore:
    """A restore after its prepare phase: folder, devices and a QEMU waiting on ``-incoming defer``."""

    state: StateDir
    vm: Instance
    page: PageConfig
    paused: bool
    t0: float
    timeout: float
    done: bool = field(default=False)
    pending_name: str | None = None  # provisional: still in the pool folder until commit()
    steps: dict[str, float] = field(default_factory=dict)  # prepare's steps, ms since t0
    ignore_shared: bool = False  # a template's device-state stream (lightvm/mobility/template.py)
    # A template's prepared shell (lightvm/daemon/restore_pool.py): the stream is in and the
    # guest runs already (idle, placeholder identity): no stream, no cont.
    running: bool = False
    commit_on_resume: bool = False  # a provisional restore whose commit() is done while the guest wakes
    forwards: list[tuple[str, str]] = field(default_factory=list)  # (netdev, rule) added at resume: a shell's
    defer_record: bool = False  # resume() leaves the record to settle() (lightvmd: after its reply)
    settle: Callable[[], None] = field(default=lambda: None)  # writes the record (set by resume)

    @property
    def vmdir(self) -> VMDir:
        return self.vm.vmdir

    @property
    def record(self) -> VMRecord:
        return self.vm.record

    @property
    def machine(self) -> Machine:
        assert self.vm.machine is not None
        return self.vm.machine

    @property
    def region(self) -> NoxsRegion:
        assert self.vm.region is not None
        return self.vm.region

    def commit(self) -> None:
        """Make a provisional VM (an incoming migration, prepared in ``STATE/pool``) a VM of
        the state dir: its folder moves to ``vms/NAME``. Until then a killed daemon's
        successor discards it like any shell, and ``lightvm list`` does not show it.

        :raise ExistsError: a VM of that name appeared meanwhile.
        """
        if self.pending_name is None:
            return
        self.vm.vmdir = adopt(self.state, self.vmdir.path, self.pending_name, self.vm.machine, hint="")
        self.pending_name = None

    def finish(
        self, path: Path, offset: int, progress: Callable[[dict[str, Any]], None] | None = None
    ) -> RestoreResult:
        """Feed the stream at ``offset`` of ``path``, check the file's digest, rewrite the
        page, resume, wait for the guest. The guest runs nothing before the digest matched
        (QEMU loads into a paused VM: lightvm/mobility/stream.py's VerifiedFeed).
        ``progress`` gets the feed's position (bytes, left, rate) every
        stream.PROGRESS_EVERY seconds while QEMU loads, and once when the stream is in.
        A ``running`` restore (a template's shell that loaded the stream and resumed its
        guest when it was prepared: lightvm/daemon/restore_pool.py) goes straight to the
        page.

        :raise CheckpointError: the file is corrupted or the stream cannot be loaded
            (nothing of the VM is left; a corrupted file is the reason given first).
        :raise GuestError: the guest does not come back (nothing of the VM is left).
        """
        t1 = time.perf_counter()
        try:
            if not self.running:
                load_checkpoint(self.machine, path, offset, self.timeout, self.vmdir.name, self.ignore_shared, progress)
            return self.resume(t1)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, (GuestError, CheckpointError, NetworkError)):
                raise
            if isinstance(exc, (OSError, LightVMError)):
                raise CheckpointError(f"{self.vmdir.name}: restore from {path}: resume: {exc}") from exc
            raise

    def resume(self, t1: float) -> RestoreResult:
        """After the stream is in: add the host forwards, rewrite the page identity,
        ``cont``, wait for the guest. With ``defer_record`` the VM's record is written by
        :meth:`settle`, which the caller runs after it answered.

        The QMP commands are queued, not waited on one by one, and what is not needed to
        wake the guest comes after its wake-up (QEMU runs commands in order): ``cont``
        (its reply came 1-3 ms after the request under TCG, the guest's acknowledgement
        0.1 ms after that: the acknowledgement proves it worked), the NMI, then the host
        forwards (a 0.13 ms round trip with qemu/patches/qmp-read-buffer.patch; 0.6-0.8 ms
        of QEMU's time before it, which read a command a byte at a time) and, with
        ``commit_on_resume``, the folder's move to ``vms/NAME`` (~0.6 ms) while the guest
        wakes. The reply waits
        for all of them: a forward QEMU refused, or a name taken meanwhile, fails the
        restore after all.

        :raise LightVMError: QEMU or the guest fails (the caller aborts).
        """
        from lightvm.devices.shellnet import check_forwards, queue_forwards

        rules = [(netdev, rule, f"{self.vmdir.name}: hostfwd {rule}") for netdev, rule in self.forwards]
        forwards: list[tuple[str, int]] = []

        def meanwhile() -> None:  # while the guest wakes
            forwards.extend(queue_forwards(self.machine, rules))
            if self.commit_on_resume:
                self.commit()

        self.region.write_config(self.page)
        if self.paused:
            meanwhile()
        else:
            cont_id = None if self.running else self.machine.resume(wait=False)
            wait_guest_follows(self.machine, self.region, self.timeout, self.vmdir.name, cont_id, meanwhile)
        check_forwards(self.machine, forwards)
        t_done = time.perf_counter()
        boot = self.region.boot_record()
        record = self.record
        ms = round((t_done - self.t0) * 1000, 3)
        state = VMStatus.PAUSED.value if self.paused else VMStatus.RUNNING.value
        boot_ms: dict[str, float | None] = {"ready": ms, "restore": ms, "resume": round((t_done - t1) * 1000, 3)}
        self.settle = functools.partial(self.vm.up, state, boot_ms, gone_ok=self.defer_record)
        if not self.defer_record:
            self.settle()
        self.done = True
        assert record.pid is not None
        return RestoreResult(
            name=record.name,
            id=record.id,
            pid=record.pid,
            restore_ms=(t_done - self.t0) * 1000,
            finish_ms=(t_done - t1) * 1000,
            heartbeat=boot.heartbeat,
            app_counter=boot.app_counter,
            paused=self.paused,
            app=boot.app,
        )

    def abort(self) -> None:
        """Undo everything the prepare phase made (idempotent)."""
        if self.done:
            return
        self.done = True
        self.vm.abort()


def load_checkpoint(
    machine: Machine,
    path: Path,
    offset: int,
    timeout: float,
    what: str,
    ignore_shared: bool = False,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Feed the stream at ``offset`` of ``path`` into ``machine`` (an ``-incoming defer``
    QEMU), wait until QEMU has loaded it and check the file's digest; the VM stays paused.
    ``progress``: as :meth:`PreparedRestore.finish`'s.

    :raise CheckpointError: the file is corrupted, changed, or its stream cannot be loaded
        (a corrupted file is the reason given first). The caller cleans up the QEMU.
    """
    step = "open checkpoint"
    try:
        _, layout = read_layout(path)
        if layout.offset != offset:
            raise CheckpointError(f"{path}: the file changed since its header was read; restore it again")
        feed = VerifiedFeed.open(path, layout)
        step = "load migration stream"
        feed.start(machine, ignore_shared)
        try:
            check = feed.reporter(progress) if progress is not None else None
            wait_incoming(machine, timeout, f"{what}: restore", check=check)
        except LightVMError as exc:
            feed.verify(2.0, mismatch_only=True)  # a corrupted file is the reason, not what QEMU made of it
            raise qemu_reason(machine, exc) from exc
        step = "verify checkpoint"
        feed.verify(timeout)
        if progress is not None:
            progress(feed.progress("completed"))
    except (OSError, LightVMError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{what}: restore from {path}: {step}: {exc}") from exc


def qemu_reason(machine: Machine, exc: LightVMError) -> LightVMError:
    """QEMU's own last words (its log's last line, e.g. a host port already taken) when a
    QMP error means it exited; ``exc`` otherwise. Create reports them the same way."""
    if isinstance(exc, QMPError) and not isinstance(exc, LaunchError) and machine.wait(1.0):
        return machine.launch_error(f"QEMU exited ({exc})")
    return exc


def page_generation(region: NoxsRegion) -> int:
    page = DevicePage.from_buffer(region.raw(), 0)
    try:
        return int(page.generation)
    finally:
        del page


FOLLOW_POLL_S = 0.00005  # the boot record polled this often for the first FOLLOW_FAST_S ...
FOLLOW_FAST_S = 0.05  # ... (a guest follows within ~1 ms), then backing off to 5 ms


def wait_guest_follows(
    machine: Machine,
    region: NoxsRegion,
    timeout: float,
    what: str,
    cont_id: int | None = None,
    meanwhile: Callable[[], None] | None = None,
) -> None:
    """Wake the guest and wait until it has seen the rewritten page.

    The guest acknowledges a new page generation from its idle loop (and re-bases its
    wall clock): proof that its vCPU runs the restored state, not a reboot. The wake-up:
    a unikernel's page promises the NMI doorbell; a Linux guest's init wakes on a byte in
    its console (a console pipe, :func:`prepare_incoming`), else it sees the page at its
    next poll, up to 15 ms later (tinyx/init/main.c). ``cont_id``: a ``cont`` queued and
    not waited on; its error reply fails the wait at once. ``meanwhile`` runs once the
    wake-up is queued (its errors go up).

    :raise GuestError: the guest is not READY or does not follow within ``timeout``.
    """
    generation = page_generation(region) & 0xFFFFFFFF
    if region.rings_nmi_doorbell():
        with contextlib.suppress(QMPError):
            machine.qmp.send("inject-nmi")
    elif machine.config.console_pipe is not None:
        ring_console_bell(machine.config.console_pipe)
    if meanwhile is not None:
        meanwhile()
    deadline = Deadline(timeout)
    fast_until = time.perf_counter() + FOLLOW_FAST_S
    delay = FOLLOW_POLL_S
    while True:
        record = region.boot_record()
        if record.state is not BootState.READY:
            raise GuestError(f"{what}: guest is {record.state.name} after the restore, not READY: {record.message}")
        if record.generation_seen == generation:
            return
        said = machine.qmp.reply(cont_id) if cont_id is not None else None
        if said is not None and "error" in said:
            raise GuestError(f"{what}: QEMU refused cont: {said['error'].get('desc', said['error'])}")
        if deadline.expired() or not machine.is_running():
            raise GuestError(f"{what}: guest did not resume within {timeout:.1f} s (page generation not seen)")
        machine.qmp.pump(delay)
        if time.perf_counter() >= fast_until:
            delay = min(delay * 2, 0.005)


def pinned_spec(spec: VMSpec, saved_vifs: list[dict[str, Any]]) -> VMSpec:
    """``spec`` with each vif's MAC (and tap address) pinned to what the guest already uses.

    The guest configured its NIC at boot and does not re-read its vif page: the restored
    VM's host side must match (same MAC; on a network or bridge, the same IP).
    """
    vifs = list(spec.vifs)
    for i, data in enumerate(saved_vifs[: len(vifs)]):
        changes: dict[str, Any] = {"mac": str(data.get("mac") or "") or None}
        if data.get("mode") == "tap" and data.get("ip"):
            ip = str(data["ip"])
            changes["ip"] = ip if vifs[i].network else f"{ip}/{int(data.get('prefix', 32))}"
        vifs[i] = dataclasses.replace(vifs[i], **changes)
    return dataclasses.replace(spec, vifs=tuple(vifs))


def restore_identity(meta: dict[str, Any], name: str | None, where: str) -> tuple[VMSpec, str, uuidlib.UUID]:
    """The restored VM's spec (its vifs pinned), name and uuid (the saved one unless renamed).

    :raise SpecError: the header's spec is not valid here (e.g. the kernel file is gone).
    """
    spec = parse_spec(meta["spec"], source=Path(where), check_kernel=True)
    vm_name = name or str(meta["name"])
    check_name(vm_name, "--name")
    spec = pinned_spec(spec.with_name(vm_name) if vm_name != spec.name else spec, list(meta["vifs"]))
    renamed = vm_name != meta["name"] or "uuid" not in meta
    return spec, vm_name, uuidlib.uuid4() if renamed else uuidlib.UUID(str(meta["uuid"]))


def _devices(vm: Instance, spec: VMSpec, meta: dict[str, Any]) -> tuple[list[str], NetNamespace]:
    """The QEMU device args of the restored VM, and what to launch its QEMU in."""
    saved_vifs = list(meta["vifs"])
    stored_args = meta.get("qemu_args")
    if (
        isinstance(stored_args, list)
        and all(isinstance(a, str) for a in stored_args)
        and not spec.disks
        and len(saved_vifs) == len(spec.vifs)
        and all(isinstance(v, dict) and v.get("mode") == "user" for v in saved_vifs)
    ):
        # User networking only: nothing on the host to create, and the saved args (MAC,
        # forwards) are exactly what the guest's devices were built from. (It also skips
        # the ~190 ms import of the net module.)
        if saved_vifs:
            vm.record.devices["vifs"] = saved_vifs
        vm.record.devices.pop("vifs_pending", None)
        return list(stored_args), contextlib.nullcontext
    # Device entries are validated by the device modules when the taps are made.
    args, _, _, netns = vm.prepare_devices(spec)
    # A VM started from an image's snapshot on a tap network (lightvm/mobility/snapshot.py),
    # or saved after it: the stream holds the state of the snapshot's user netdevs ("slirp"
    # sections), which QEMU loads only into netdevs of that kind; these have no device and
    # forward nothing. A snapshot's header names them; a saved VM's command line has them.
    extra = meta.get("qemu_args_extra") or deviceless_netdevs(stored_args if isinstance(stored_args, list) else [])
    return [*args, *(str(a) for a in extra)], netns


def deviceless_netdevs(argv: list[str]) -> list[str]:
    """The ``-netdev`` arguments of ``argv`` that no ``-device`` uses (``netdev=ID``): state
    holders a VM carries from an image's snapshot (restricted user networks), kept as they
    were. A netdev with a device is a vif, which a restore makes again."""

    def option(value: str, key: str) -> str:
        return next((o[len(key) + 1 :] for o in value.split(",") if o.startswith(key + "=")), "")

    pairs = [(argv[i], str(argv[i + 1])) for i in range(len(argv) - 1) if argv[i] in ("-netdev", "-device")]
    used = {option(value, "netdev") for flag, value in pairs if flag == "-device"}
    out: list[str] = []
    for flag, value in pairs:
        if flag == "-netdev" and option(value, "id") and option(value, "id") not in used:
            out += [flag, value]
    return out


def prepare_incoming(
    toolstack: Toolstack,
    meta: dict[str, Any],
    name: str | None,
    where: str,
    timeout: float = 10.0,
    launch: dict[str, Any] | None = None,
    noxs_init: bytes | None = None,
) -> PreparedRestore:
    """Allocate a VM for the checkpoint described by ``meta`` and spawn its QEMU with
    ``-incoming defer``: devices and NoXS file ready, waiting for the stream.

    A template (lightvm/mobility/template.py) passes ``launch`` (MachineConfig fields: its
    RAM file) and ``noxs_init``, the NoXS region as saved: its stream leaves the region out
    (``x-ignore-shared``), so the guest's half of the page is written into the new file here.

    :raise SpecError: the header's spec is not valid here (e.g. the kernel file is gone).
    :raise ExistsError: the name is taken.
    :raise LightVMError: a step failed (nothing is left).
    """
    t0 = time.perf_counter()
    spec, vm_name, vm_uuid = restore_identity(meta, name, where)
    state = toolstack.state
    state.ensure()
    (vmdir,) = state.allocate([vm_name])
    ndev = 1 + len(spec.vifs) + len(spec.disks)
    accel, noxs_size = str(meta.get("accel", "tcg")), int(meta["noxs_size"])
    record = VMRecord.new(vm_name, uuidlib.uuid4().hex[:16], str(vm_uuid), accel, noxs_size, spec.to_dict())
    vm = Instance(vmdir, record, state.root)
    with vm.steps(f"{vm_name}: restore", keep=(CheckpointError, GuestError)):
        region = vm.create_region(ndev)
        if region.size != record.noxs_size:
            raise CheckpointError(f"NoXS region is {region.size} bytes here, {record.noxs_size} in the checkpoint")
        if noxs_init is not None:
            if len(noxs_init) != region.size:
                raise CheckpointError(f"the template's NoXS region is {len(noxs_init)} bytes, {region.size} here")
            region.raw()[:] = noxs_init
        vm.step = "prepare devices"
        extra_args, netns = _devices(vm, spec, meta)
        changes = dict(launch or {})
        if spec.is_linux:  # its init wakes on a console byte: the rewritten page is taken at once
            changes["console_pipe"] = make_console_pipe(vmdir)
        machine = vm.launch((*extra_args, "-incoming", "defer"), netns, **changes)
        t_spawned = time.perf_counter()
        vm.step = "start QEMU"
        try:
            machine.qmp.negotiate(timeout)  # QEMU up: prepared, the start is off the critical path
        except QMPError as exc:
            raise qemu_reason(machine, exc) from exc
        t_qmp = time.perf_counter()
        page = page_from_json(meta["page"], vm_name, vm_uuid)
        prepared = PreparedRestore(state, vm, page, bool(meta.get("paused")), t0, timeout)
        prepared.steps = {"spawned": (t_spawned - t0) * 1000, "qmp": (t_qmp - t0) * 1000}
        return prepared


def restore(
    toolstack: Toolstack,
    path: Path,
    name: str | None = None,
    timeout: float = 10.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> RestoreResult:
    """Restore the VM saved in ``path`` (named as saved, or ``name``); the file is kept.
    A template folder goes through :func:`lightvm.mobility.template.restore_path`.
    ``progress``: as :meth:`PreparedRestore.finish`'s.

    :raise CheckpointError: the file is not a checkpoint this lightvm reads, or its stream fails.
    :raise ExistsError: a VM of that name exists.
    :raise GuestError: the guest does not come back.
    """
    t0 = time.perf_counter()
    path = Path(path)
    meta, offset = read_header(path)
    prepared = prepare_incoming(toolstack, meta, name, str(path), timeout)
    prepared.t0 = t0
    return prepared.finish(path, offset, progress)


__all__ = ["PreparedRestore", "RestoreResult", "load_checkpoint", "prepare_incoming", "restore", "restore_identity"]
