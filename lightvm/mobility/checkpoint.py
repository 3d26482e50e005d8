"""Save a VM to a file and restore it: QEMU's migration stream behind a lightvm header.

File format (version 1), all integers little-endian::

    offset  size  field
    0       8     magic        b"LVMCKPT\\0"
    8       2     version      1 (a reader refuses any other)
    10      2     flags        0 (reserved; a reader refuses unknown bits)
    12      4     header_len   length N of the JSON header that follows (1 .. 1 MiB)
    16      N     JSON header  UTF-8 object, see below
    16+N    ...   QEMU's migration stream (``migrate fd:``), to the end of the file

The JSON header::

    {"format": "lightvm-checkpoint", "name": VM name, "uuid": VM uuid,
     "accel": "tcg", "saved_at": unix time, "paused": was the VM paused when saved,
     "spec": the VM spec (VMSpec.to_dict(): absolute kernel/firmware paths),
     "noxs_size": bytes of the NoXS region,
     "page": {"tsc_hz": int, "nmi_doorbell": bool,
              "vifs": [{"mac", "ip", "prefix", "gateway", "mtu", "bridge"}, ...],
              "vbds": [{"sectors", "sector_size", "read_only"}, ...]},
     "vifs": the vifs' host side as created (PreparedVif.to_dict(): mode, MAC, IP, tap, ...)}

What the stream carries: guest RAM (the memfd backend) *and* the NoXS region (the
ivshmem ``memory-backend-file`` is a RAM block like any other), device state, vCPUs.
So restore needs no guest cooperation. It spawns QEMU with the argv create would
build (same RAM blocks, same devices) plus ``-incoming defer`` and a *fresh* NoXS
file, feeds it the stream with ``migrate-incoming fd:``, then rewrites the host-owned
part of the page from the header (new name/uuid if the VM is renamed, ``host_time_ns``,
generation bumped: the guest re-bases its wall clock) and resumes. The guest's own
boot record (heartbeat, app counter) arrives with the stream and keeps counting.

Restore is split like create: :func:`prepare_restore` (read the header, allocate the
VM folder, networking, spawn the ``-incoming defer`` QEMU) and :meth:`PreparedRestore.finish`
(the stream, the page, ``cont``, READY). Prepared ahead of time, the QEMU start is off
the critical path.

Save writes ``.NAME.partial-PID`` next to FILE and renames it at the end: any
failure (QEMU error, disk full, timeout) removes the partial file and resumes the VM.
No fsync: a checkpoint is as durable as the file system's writeback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import struct
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightvm import hostfacts
from lightvm.errors import GuestError, LightVMError, QMPError, StateError
from lightvm.machine import Machine
from lightvm.noxs import BootState, DevicePage, NoxsRegion, PageConfig, VbdConfig, VifConfig, parse_mac
from lightvm.spec import VMSpec, check_name, parse_spec
from lightvm.state import VMDir, VMRecord, VMStatus, status_of
from lightvm.toolstack import Toolstack, _machine_config, _Undo
from lightvm.util import Deadline

if TYPE_CHECKING:
    from lightvm.daemon.restore_pool import IncomingShell

MAGIC = b"LVMCKPT\0"
VERSION = 1
FORMAT = "lightvm-checkpoint"
PREFIX = struct.Struct("<8sHHI")
HEADER_MAX = 1 << 20
FDNAME = "lvckpt"
MIGRATE_POLL = 0.0005


class CheckpointError(LightVMError):
    """A checkpoint file cannot be written or read (names the file and what is wrong)."""


@dataclass
class SaveResult:
    name: str
    path: str
    bytes: int
    save_ms: float  # request -> file complete (VM stopped, stream written, renamed)
    downtime_ms: float  # VM stopped -> file complete (or -> resumed with --keep-running)
    total_ms: float  # including destroy (or cont)
    kept_running: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


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

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


# ---------------------------------------------------------------------- file format


def encode_header(meta: dict[str, Any]) -> bytes:
    body = json.dumps(meta, separators=(",", ":")).encode()
    if len(body) > HEADER_MAX:
        raise CheckpointError(f"checkpoint header of {len(body)} bytes exceeds {HEADER_MAX}")
    return PREFIX.pack(MAGIC, VERSION, 0, len(body)) + body


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a checkpoint file and the offset of QEMU's stream.

    :raise CheckpointError: not a lightvm checkpoint, another version, a truncated or
        malformed header (one line saying which).
    """
    try:
        with open(path, "rb") as f:
            prefix = f.read(PREFIX.size)
            if len(prefix) < PREFIX.size or prefix[:8] != MAGIC:
                raise CheckpointError(f"{path}: not a lightvm checkpoint (bad magic)")
            _, version, flags, length = PREFIX.unpack(prefix)
            if version != VERSION:
                raise CheckpointError(
                    f"{path}: checkpoint format version {version} is not supported (this lightvm reads {VERSION})"
                )
            if flags:
                raise CheckpointError(f"{path}: unknown checkpoint flags {flags:#x}")
            if not 0 < length <= HEADER_MAX:
                raise CheckpointError(f"{path}: bad checkpoint header length {length}")
            body = f.read(length)
            if len(body) < length:
                raise CheckpointError(f"{path}: truncated checkpoint header ({len(body)} of {length} bytes)")
            size = os.fstat(f.fileno()).st_size
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        meta = json.loads(body)
    except ValueError as exc:
        raise CheckpointError(f"{path}: checkpoint header is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint header is not a {FORMAT} header")
    for key, kind in (("name", str), ("spec", dict), ("noxs_size", int), ("page", dict), ("vifs", list)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{path}: checkpoint header lacks a valid {key!r}")
    offset = PREFIX.size + length
    if size <= offset:
        raise CheckpointError(f"{path}: truncated checkpoint (no migration stream after the header)")
    return meta, offset


def page_to_json(page: PageConfig) -> dict[str, Any]:
    return {
        "tsc_hz": page.tsc_hz,
        "nmi_doorbell": page.nmi_doorbell,
        "vifs": [
            {
                "mac": v.mac.hex(":"),
                "ip": v.ip,
                "prefix": v.prefix,
                "gateway": v.gateway,
                "mtu": v.mtu,
                "bridge": v.bridge,
            }
            for v in page.vifs
        ],
        "vbds": [{"sectors": b.sectors, "sector_size": b.sector_size, "read_only": b.read_only} for b in page.vbds],
    }


def page_from_json(data: dict[str, Any], name: str, vm_uuid: uuidlib.UUID) -> PageConfig:
    """:raise CheckpointError: on a malformed page description."""
    try:
        vifs = [
            VifConfig(
                mac=parse_mac(str(v["mac"])),
                ip=str(v["ip"]),
                prefix=int(v["prefix"]),
                gateway=str(v["gateway"]),
                mtu=int(v["mtu"]),
                bridge=str(v.get("bridge", "")),
            )
            for v in data.get("vifs", [])
        ]
        vbds = [VbdConfig(int(b["sectors"]), int(b["sector_size"]), bool(b["read_only"])) for b in data.get("vbds", [])]
        return PageConfig(
            name=name,
            uuid=vm_uuid,
            vifs=vifs,
            vbds=vbds,
            tsc_hz=int(data.get("tsc_hz", 0)),
            nmi_doorbell=bool(data.get("nmi_doorbell", True)),
        )
    except (KeyError, TypeError, ValueError, LightVMError) as exc:
        raise CheckpointError(f"checkpoint header: bad NoXS page description ({exc})") from exc


def header_for(record: VMRecord, paused: bool) -> dict[str, Any]:
    """The JSON header describing ``record``'s VM (everything restore needs besides the stream)."""
    saved_vifs = list(record.devices.get("vifs") or [])
    # Straight from the saved dicts (PreparedVif.to_dict()): importing devices.net costs ~190 ms.
    vif_configs = [
        VifConfig(
            mac=parse_mac(str(v["mac"])),
            ip=str(v["ip"]),
            prefix=int(v["prefix"]),
            gateway=str(v["gateway"]),
            mtu=int(v["mtu"]),
            bridge=str(v.get("bridge") or ""),
        )
        for v in saved_vifs
    ]
    vbds: list[VbdConfig] = []
    if record.devices.get("disks"):
        from lightvm.devices import blk

        vbds = [blk.noxs_config(blk.PreparedDisk.from_dict(d)) for d in record.devices["disks"]]
    page = PageConfig(name=record.name, vifs=vif_configs, vbds=vbds, tsc_hz=hostfacts.tsc_hz(), nmi_doorbell=True)
    return {
        "format": FORMAT,
        "name": record.name,
        "uuid": record.uuid,
        "accel": record.accel,
        "saved_at": time.time(),
        "paused": paused,
        "spec": record.spec,
        "noxs_size": record.noxs_size,
        "page": page_to_json(page),
        "vifs": saved_vifs,
        "qemu_args": device_args(record.argv),
    }


def device_args(argv: list[str]) -> list[str]:
    """The device arguments of a VM's QEMU command line (build_argv puts ``extra_args``
    between the QMP monitor and the final ``-S``): vifs and disks as QEMU saw them."""
    try:
        start = argv.index("-mon") + 2
    except ValueError:
        return []
    end = len(argv) - 1 if argv and argv[-1] == "-S" else len(argv)
    args = argv[start:end]
    if args[-2:] == ["-incoming", "defer"]:  # a restored VM's QEMU: not a device
        args = args[:-2]
    return args


# ---------------------------------------------------------------------- QMP helpers


def want_events(machine: Machine) -> None:
    """Ask QEMU for MIGRATION events (queued, reply not awaited): the polls in
    :func:`wait_migration` and :func:`wait_incoming` then wake when the state changes
    instead of at their next back-off step (a few ms of a ~5 ms migration)."""
    machine.qmp.send("migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]})


def wait_migration(machine: Machine, timeout: float, what: str, stall: float | None = None) -> dict[str, Any]:
    """Poll ``query-migrate`` until the migration completes; its final answer.

    With ``stall``, a stream that sends nothing for that many seconds is cancelled (a cut
    network stalls TCP silently; QEMU itself would wait for minutes).

    :raise QMPError: it failed or was cancelled (QEMU's reason quoted), stalled, or did not finish in time.
    """
    deadline = Deadline(timeout)
    settle = Deadline(timeout)  # re-armed at completion (below)
    completed = False
    delay = MIGRATE_POLL
    sent, since = -1, time.monotonic()
    while True:
        info = machine.qmp.execute("query-migrate", timeout=max(0.5, deadline.remaining()))
        status = str(info.get("status", "")) if isinstance(info, dict) else ""
        if status == "completed":
            if not completed:
                completed, settle = True, Deadline(0.2)
            if not info.get("total-time") and not settle.expired():
                # QEMU sets the state (and sends its event) a moment before it fills in
                # total-time and downtime: ask again for the figures.
                machine.qmp.pump(0.0005)
                continue
            return dict(info)
        if status in ("failed", "cancelled"):
            reason = str(info.get("error-desc", status))
            raise QMPError(f"{what} {status}: {reason}")
        ram = info.get("ram") if isinstance(info, dict) else None
        now_sent = int(ram.get("transferred", 0)) if isinstance(ram, dict) else 0
        if now_sent != sent:
            sent, since = now_sent, time.monotonic()
        stalled = stall is not None and status == "active" and time.monotonic() - since > stall
        if deadline.expired() or stalled:
            with contextlib.suppress(QMPError):
                machine.qmp.execute("migrate_cancel", timeout=1.0)
            if stalled:
                raise QMPError(
                    f"{what} stalled: nothing sent for {stall:.1f} s after {sent} bytes "
                    "(is the network to the destination down?)"
                )
            raise QMPError(f"{what} did not complete within {timeout:.1f} s (status {status or 'unknown'})")
        machine.qmp.pump(delay)
        delay = min(delay * 2, 0.01)


def wait_incoming(machine: Machine, timeout: float, what: str, check: Callable[[], None] | None = None) -> None:
    """Wait until QEMU has loaded an incoming stream (its runstate leaves ``inmigrate``).
    ``check`` runs on every poll and may raise to abort (e.g. the migration's peer went away).

    :raise QMPError: the load failed (QEMU exits or reports failure) or took too long.
    """
    deadline = Deadline(timeout)
    delay = MIGRATE_POLL
    while True:
        if check is not None:
            check()
        status = machine.query_status(timeout=max(0.5, deadline.remaining()))
        if status != "inmigrate":
            info = machine.qmp.execute("query-migrate", timeout=2.0)
            state = str(info.get("status", "")) if isinstance(info, dict) else ""
            if state and state != "completed":
                raise QMPError(f"{what}: incoming migration {state}: {info.get('error-desc', '')}")
            if status not in ("paused", "prelaunch", "running"):
                raise QMPError(f"{what}: QEMU is {status} after the incoming migration")
            return
        if deadline.expired():
            raise QMPError(f"{what}: incoming migration not finished within {timeout:.1f} s")
        machine.qmp.pump(delay)
        delay = min(delay * 2, 0.01)


def page_generation(region: NoxsRegion) -> int:
    page = DevicePage.from_buffer(region.raw(), 0)
    try:
        return int(page.generation)
    finally:
        del page


def wait_guest_follows(machine: Machine, region: NoxsRegion, timeout: float, what: str) -> None:
    """Wake the guest (NMI doorbell) and wait until it has seen the rewritten page.

    The guest acknowledges a new page generation from its idle loop (and re-bases its
    wall clock): proof that its vCPU runs the restored state, not a reboot.

    :raise GuestError: the guest is not READY or does not follow within ``timeout``.
    """
    generation = page_generation(region) & 0xFFFFFFFF
    with contextlib.suppress(QMPError):
        machine.qmp.send("inject-nmi")
    deadline = Deadline(timeout)
    delay = 0.0002
    while True:
        record = region.boot_record()
        if record.state is not BootState.READY:
            raise GuestError(f"{what}: guest is {record.state.name} after the restore, not READY: {record.message}")
        if record.generation_seen == generation:
            return
        if deadline.expired() or not machine.is_running():
            raise GuestError(f"{what}: guest did not resume within {timeout:.1f} s (page generation not seen)")
        machine.qmp.pump(delay)
        delay = min(delay * 2, 0.005)


# ---------------------------------------------------------------------- save


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _save_error(path: Path, exc: BaseException) -> CheckpointError:
    text = str(exc)
    if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in text:
        return CheckpointError(f"cannot save to {path}: disk full (no space left on device); the VM keeps running")
    if isinstance(exc, OSError):
        return CheckpointError(f"cannot save to {path}: {exc.strerror or exc}; the VM keeps running")
    return CheckpointError(f"cannot save to {path}: {text}; the VM keeps running")


def save(toolstack: Toolstack, name: str, path: Path, keep_running: bool = False, timeout: float = 30.0) -> SaveResult:
    """Save VM ``name`` to ``path`` (a new file); destroy it unless ``keep_running``.

    On any failure the partial file is removed and the VM runs on as before.

    :raise NotFoundError: no such VM.
    :raise StateError: the VM is not running or paused.
    :raise CheckpointError: the file cannot be written (e.g. disk full) or QEMU failed.
    """
    t0 = time.perf_counter()
    vmdir = toolstack.state.get(name)
    record = _running_record(vmdir)
    paused = status_of(vmdir, record) is VMStatus.PAUSED
    path = Path(path)
    if path.exists():
        raise CheckpointError(f"{path} exists; remove it or pick another file")
    data = encode_header(header_for(record, paused))
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise _save_error(path, exc) from exc
    machine = Machine.adopt(_machine_config(vmdir, record), record.pid or 0, record.pid_start, paused=paused)
    stopped = False
    t_stop = t0
    try:
        try:
            _write_all(fd, data)
            t_stop = time.perf_counter()
            if not paused:
                machine.qmp.execute("stop", timeout=5.0)
                stopped = True
            machine.qmp.send_fd(fd, FDNAME)
            want_events(machine)
            machine.qmp.execute("migrate", {"uri": f"fd:{FDNAME}"}, timeout=5.0)
            wait_migration(machine, timeout, "save")
            size = os.fstat(fd).st_size
            os.close(fd)
            fd = -1
            os.rename(tmp, path)
        except (OSError, LightVMError) as exc:
            if fd >= 0:
                os.close(fd)
                fd = -1
            tmp.unlink(missing_ok=True)
            if stopped:
                with contextlib.suppress(LightVMError):
                    machine.qmp.execute("cont", timeout=5.0)
            raise _save_error(path, exc) from exc
        t_saved = time.perf_counter()
        if keep_running:
            if stopped:
                machine.qmp.execute("cont", timeout=5.0)
            downtime = time.perf_counter() - t_stop
        else:
            downtime = t_saved - t_stop
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    finally:
        machine.disconnect()
        if machine.process is not None:
            machine.process.close()
    if not keep_running:
        toolstack.destroy(name)
    t_end = time.perf_counter()
    return SaveResult(
        name=name,
        path=str(path),
        bytes=size,
        save_ms=(t_saved - t0) * 1000,
        downtime_ms=downtime * 1000,
        total_ms=(t_end - t0) * 1000,
        kept_running=keep_running,
    )


def _running_record(vmdir: VMDir) -> VMRecord:
    record = vmdir.read()
    if record is None:
        raise StateError(f"{vmdir.name}: incomplete VM (its create was interrupted); `lightvm destroy` it")
    status = status_of(vmdir, record)
    if status not in (VMStatus.RUNNING, VMStatus.PAUSED):
        raise StateError(f"{vmdir.name}: cannot save a VM that is {status.value} (needs running or paused)")
    return record


# ---------------------------------------------------------------------- restore


def pinned_spec(spec: VMSpec, saved_vifs: list[dict[str, Any]]) -> VMSpec:
    """``spec`` with each vif's MAC (and tap address) pinned to what the guest already uses.

    The guest configured its NIC at boot and does not re-read its vif page: the restored
    VM's host side must match (same MAC; on a network or bridge, the same IP).
    """
    import dataclasses

    vifs = list(spec.vifs)
    for i, data in enumerate(saved_vifs[: len(vifs)]):
        changes: dict[str, Any] = {"mac": str(data.get("mac") or "") or None}
        if data.get("mode") == "tap" and data.get("ip"):
            ip = str(data["ip"])
            changes["ip"] = ip if vifs[i].network else f"{ip}/{int(data.get('prefix', 32))}"
        vifs[i] = dataclasses.replace(vifs[i], **changes)
    return dataclasses.replace(spec, vifs=tuple(vifs))


@dataclass
class PreparedRestore:
    """A restore after its prepare phase: folder, devices and a QEMU waiting on ``-incoming defer``."""

    toolstack: Toolstack
    vmdir: VMDir
    record: VMRecord
    machine: Machine
    region: NoxsRegion
    page: PageConfig
    paused: bool
    undo: _Undo
    t0: float
    timeout: float
    done: bool = field(default=False)
    pending_name: str | None = None  # provisional: still in the pool folder until commit()
    steps: dict[str, float] = field(default_factory=dict)  # prepare's steps, ms since t0

    def commit(self) -> None:
        """Make a provisional VM (an incoming migration, prepared in ``STATE/pool``) a VM of
        the state dir: its folder moves to ``vms/NAME``. Until then a killed daemon's
        successor discards it like any shell, and ``lightvm list`` does not show it.

        :raise ExistsError: a VM of that name appeared meanwhile.
        """
        if self.pending_name is None:
            return
        from lightvm.errors import ExistsError

        state = self.toolstack.state
        target = state.vms_root / self.pending_name
        with state.lock():
            if target.exists():
                raise ExistsError(f"a VM named {self.pending_name!r} already exists in {state.root}")
            os.rename(self.vmdir.path, target)
        self.vmdir = VMDir(target)
        self.pending_name = None

    def finish(self, path: Path, offset: int) -> RestoreResult:
        """Feed the stream at ``offset`` of ``path``, rewrite the page, resume, wait for the guest.

        :raise CheckpointError: the stream cannot be loaded (nothing of the VM is left).
        :raise GuestError: the guest does not come back (nothing of the VM is left).
        """
        t1 = time.perf_counter()
        step = "open checkpoint"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.lseek(fd, offset, os.SEEK_SET)
                step = "load migration stream"
                self.machine.qmp.send_fd(fd, FDNAME)
            finally:
                os.close(fd)  # QEMU holds its own copy now
            want_events(self.machine)
            self.machine.qmp.execute("migrate-incoming", {"uri": f"fd:{FDNAME}"}, timeout=5.0)
            wait_incoming(self.machine, self.timeout, f"{self.vmdir.name}: restore")
            return self.resume(t1)
        except BaseException as exc:
            self.abort()
            if isinstance(exc, GuestError):
                raise
            if isinstance(exc, (OSError, LightVMError)):
                raise CheckpointError(f"{self.vmdir.name}: restore from {path}: {step}: {exc}") from exc
            raise

    def resume(self, t1: float) -> RestoreResult:
        """After the stream is in: rewrite the page identity, ``cont``, wait for the guest.

        :raise LightVMError: QEMU or the guest fails (the caller aborts).
        """
        self.region.write_config(self.page)
        if not self.paused:
            self.machine.resume(wait=True)
            wait_guest_follows(self.machine, self.region, self.timeout, self.vmdir.name)
        t_done = time.perf_counter()
        boot = self.region.boot_record()
        record = self.record
        record.state = VMStatus.PAUSED.value if self.paused else VMStatus.RUNNING.value
        ms = round((t_done - self.t0) * 1000, 3)
        record.boot_ms = {"ready": ms, "restore": ms, "resume": round((t_done - t1) * 1000, 3)}
        self.vmdir.write(record)
        self.vmdir.mark_created()
        self.machine.release()
        self.region.close()
        self.undo.run_only("network context")
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
        )

    def abort(self) -> None:
        """Undo everything the prepare phase made (idempotent)."""
        if self.done:
            return
        self.done = True
        self.undo.unwind()
        with contextlib.suppress(Exception):
            self.toolstack._destroy_dir(self.vmdir)


def prepare_incoming(
    toolstack: Toolstack, meta: dict[str, Any], name: str | None, where: str, timeout: float = 10.0
) -> PreparedRestore:
    """Allocate a VM for the checkpoint described by ``meta`` and spawn its QEMU with
    ``-incoming defer``: devices and NoXS file ready, waiting for the stream.

    :raise SpecError: the header's spec is not valid here (e.g. the kernel file is gone).
    :raise ExistsError: the name is taken.
    :raise LightVMError: a step failed (nothing is left).
    """
    t0 = time.perf_counter()
    spec = parse_spec(meta["spec"], source=Path(where), check_kernel=True)
    vm_name = name or str(meta["name"])
    check_name(vm_name, "--name")
    spec = pinned_spec(spec.with_name(vm_name) if vm_name != spec.name else spec, list(meta["vifs"]))
    # Device entries are validated by the device modules when taps are made; user-networking
    # vifs reuse the saved QEMU args (and skip the ~190 ms import of the net module).
    toolstack.state.ensure()
    (vmdir,) = toolstack.state.allocate([vm_name])
    vm_uuid = uuidlib.uuid4() if vm_name != meta["name"] or "uuid" not in meta else uuidlib.UUID(str(meta["uuid"]))
    vm_id = uuidlib.uuid4().hex[:16]
    ndev = 1 + len(spec.vifs) + len(spec.disks)
    record = VMRecord.new(
        vm_name, vm_id, str(vm_uuid), str(meta.get("accel", "tcg")), int(meta["noxs_size"]), spec.to_dict()
    )
    undo = _Undo()
    step = "record state"
    try:
        vmdir.write(record)
        step = "create NoXS region"
        region = NoxsRegion.create(Path(record.noxs_path), ndev)
        undo.push("NoXS region", region.close)
        undo.push("NoXS file", region.unlink)
        if region.size != record.noxs_size:
            raise CheckpointError(f"NoXS region is {region.size} bytes here, {record.noxs_size} in the checkpoint")
        step = "prepare devices"
        saved_vifs = list(meta["vifs"])
        stored_args = meta.get("qemu_args")
        netns: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
        if (
            isinstance(stored_args, list)
            and all(isinstance(a, str) for a in stored_args)
            and not spec.disks
            and len(saved_vifs) == len(spec.vifs)
            and all(isinstance(v, dict) and v.get("mode") == "user" for v in saved_vifs)
        ):
            # User networking only: nothing on the host to create, and the saved args
            # (MAC, forwards) are exactly what the guest's devices were built from.
            extra_args = list(stored_args)
            if saved_vifs:
                record.devices["vifs"] = saved_vifs
            record.devices.pop("vifs_pending", None)
        else:
            extra_args, _, _, netns = toolstack._prepare_devices(vmdir, spec, record, undo)
        base = _machine_config(vmdir, record)
        import dataclasses

        config = dataclasses.replace(
            base,
            extra_args=(*extra_args, "-incoming", "defer"),
            bios=spec.firmware,
        )
        step = "launch QEMU"
        machine = Machine(config)
        with netns():
            machine.launch()
        undo.push("QEMU", machine.kill)
        assert machine.process is not None
        record.pid, record.pid_start = machine.process.pid, machine.process.start_time
        record.argv = machine.argv
        record.devices.pop("vifs_pending", None)
        vmdir.write(record)
        t_spawned = time.perf_counter()
        step = "start QEMU"
        machine.qmp.negotiate(timeout)  # QEMU up: prepared, the start is off the critical path
        t_qmp = time.perf_counter()
        page = page_from_json(meta["page"], vm_name, vm_uuid)
        prepared = PreparedRestore(
            toolstack, vmdir, record, machine, region, page, bool(meta.get("paused")), undo, t0, timeout
        )
        prepared.steps = {"spawned": (t_spawned - t0) * 1000, "qmp": (t_qmp - t0) * 1000}
        return prepared
    except BaseException as exc:
        undo.unwind()
        with contextlib.suppress(Exception):
            toolstack._destroy_dir(vmdir)
        if isinstance(exc, LightVMError) and not isinstance(exc, CheckpointError):
            raise type(exc)(f"{vm_name}: restore: {step}: {exc}") from exc
        if isinstance(exc, OSError):
            raise LightVMError(f"{vm_name}: restore: {step}: {exc}") from exc
        raise


def prepare_from_shell(
    toolstack: Toolstack,
    shell: IncomingShell,
    meta: dict[str, Any],
    name: str | None,
    where: str,
    timeout: float = 10.0,
    provisional: bool = False,
) -> PreparedRestore:
    """Like :func:`prepare_incoming`, with an ``-incoming defer`` QEMU spawned ahead of time
    (:mod:`lightvm.daemon.restore_pool`): the shell becomes the VM (its folder renamed to the VM's,
    or with ``provisional`` only at :meth:`PreparedRestore.commit`), its host forwards are
    added; the shell is consumed whatever happens.

    :raise ExistsError: the name is taken. :raise LightVMError: a step failed (nothing is left).
    """
    from lightvm.daemon import restore_pool

    t0 = time.perf_counter()
    try:
        spec = parse_spec(meta["spec"], source=Path(where), check_kernel=True)
        vm_name = name or str(meta["name"])
        check_name(vm_name, "--name")
        spec = pinned_spec(spec.with_name(vm_name) if vm_name != spec.name else spec, list(meta["vifs"]))
    except BaseException:
        shell.discard()
        raise
    if provisional:
        if (toolstack.state.vms_root / vm_name).exists():
            shell.discard()
            from lightvm.errors import ExistsError

            raise ExistsError(f"a VM named {vm_name!r} already exists in {toolstack.state.root}")
        vmdir = VMDir(shell.folder)
    else:
        vmdir = restore_pool.adopt(shell, toolstack.state, vm_name)
    vm_uuid = uuidlib.uuid4() if vm_name != meta["name"] or "uuid" not in meta else uuidlib.UUID(str(meta["uuid"]))
    record = VMRecord.new(vm_name, shell.id, str(vm_uuid), shell.flavour.accel, shell.flavour.noxs_size, spec.to_dict())
    machine = shell.machine
    undo = _Undo()
    undo.push("NoXS region", shell.region.close)
    undo.push("NoXS file", shell.region.unlink)
    undo.push("QEMU", machine.kill)
    step = "record state"
    try:
        saved_args = [str(a) for a in meta.get("qemu_args") or []]
        record.pid, record.pid_start = shell.record.pid, shell.record.pid_start
        # The VM's own device args (MAC, forwards) in its record: a later save carries them.
        record.argv = [*machine.argv[: len(machine.argv) - len(shell.flavour.device_args) - 3], *saved_args, "-S"]
        if meta["vifs"]:
            record.devices["vifs"] = list(meta["vifs"])
        vmdir.write(record)
        step = "add host forwards"
        for netdev, rule in restore_pool.normalise(saved_args)[1]:
            said = machine.qmp.execute(
                "human-monitor-command", {"command-line": f"hostfwd_add {netdev} {rule}"}, timeout=5.0
            )
            if isinstance(said, str) and said.strip():
                raise LightVMError(f"hostfwd {rule}: {said.strip()}")
        page = page_from_json(meta["page"], vm_name, vm_uuid)
        prepared = PreparedRestore(
            toolstack, vmdir, record, machine, shell.region, page, bool(meta.get("paused")), undo, t0, timeout
        )
        prepared.pending_name = vm_name if provisional else None
        return prepared
    except BaseException as exc:
        undo.unwind()
        with contextlib.suppress(Exception):
            toolstack._destroy_dir(vmdir)
        if isinstance(exc, LightVMError) and not isinstance(exc, CheckpointError):
            raise type(exc)(f"{vm_name}: restore: {step}: {exc}") from exc
        if isinstance(exc, OSError):
            raise LightVMError(f"{vm_name}: restore: {step}: {exc}") from exc
        raise


def restore(toolstack: Toolstack, path: Path, name: str | None = None, timeout: float = 10.0) -> RestoreResult:
    """Restore the VM saved in ``path`` (named as saved, or ``name``); the file is kept.

    :raise CheckpointError: the file is not a checkpoint this lightvm reads, or its stream fails.
    :raise ExistsError: a VM of that name exists.
    :raise GuestError: the guest does not come back.
    """
    t0 = time.perf_counter()
    path = Path(path)
    meta, offset = read_header(path)
    prepared = prepare_incoming(toolstack, meta, name, str(path), timeout)
    prepared.t0 = t0
    return prepared.finish(path, offset)


__all__ = [
    "MAGIC",
    "VERSION",
    "CheckpointError",
    "PreparedRestore",
    "RestoreResult",
    "SaveResult",
    "prepare_from_shell",
    "prepare_incoming",
    "read_header",
    "restore",
    "save",
    "want_events",
]
