"""The toolstack (chaos analog): create, destroy, shutdown, pause, unpause, list, info.

It orchestrates :mod:`spec` (already validated), :mod:`state` (the VM folder),
:mod:`noxs` (the device page) and :mod:`instance` (one VM's lifecycle: folder, record,
NoXS region, devices, QEMU; shared with restore and lightvmd's shells).

Create, the cold path, in the order that keeps a kill -9 at any point cleanable:

1. allocate the folder + ``creating`` marker (under the state lock; all names or none)
2. write vm.json naming the NoXS file to be created
3. create the NoXS file; prepare the devices (taps, ...) and record them
4. launch QEMU paused; record its PID (and start time) at once
5. write the NoXS page while QEMU initialises; ``cont`` is queued right behind
   ``qmp_capabilities``, so the vCPUs start the moment QEMU's main loop does
6. poll the boot record until READY; mark created; let go of QEMU

Every step registers its undo; a failure unwinds all of them (newest first) and the
error names the VM and the step. ``create -n N`` is all-or-nothing too.

Why QEMU does not die with its creator (no PR_SET_PDEATHSIG): the VMs must outlive a
CLI that exits normally, and the death signal cannot be cleared from outside the
child once READY. It also fires when the spawning *thread* exits (a pool worker of
``create -n``), and setting it needs a preexec_fn, which rules out vfork and costs a
millisecond per spawn. Instead the state folder always holds enough to find and
clean what a killed create left: list shows it ``incomplete``, destroy removes it.
SIGTERM and Ctrl-C of the CLI unwind the create in process.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightvm import accel as accelmod
from lightvm import hostfacts
from lightvm.devices import blk
from lightvm.errors import GuestError, LightVMError, NoxsError, QMPError, SpecError, StateError
from lightvm.instance import Instance, attach, unrecorded_qemus
from lightvm.instance import destroy as destroy_vmdir
from lightvm.logs import INFO, log
from lightvm.noxs import BootState, NoxsRegion, PageConfig, Sysctl, region_size_for
from lightvm.resume import resume_stamped
from lightvm.spec import VMSpec, create_names
from lightvm.state import StateDir, VMDir, VMRecord, VMStatus, status_of
from lightvm.util import tail

if TYPE_CHECKING:
    from concurrent.futures import Future

DEFAULT_BOOT_TIMEOUT = 10.0


@dataclass
class CreateResult:
    name: str
    id: str
    accel: str
    boot_ms: dict[str, float | None]
    pid: int
    app: str = ""
    network: str = ""  # one line on the vifs' networking mode and addresses (empty without vifs)
    accel_reason: str = ""  # why this accelerator (lightvm.accel's verdict: "requested", "kvm unusable: ...")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "id": self.id,
            "accel": self.accel,
            "pid": self.pid,
            "app": self.app,
            "network": self.network,
            "boot_ms": self.boot_ms,
            "accel_reason": self.accel_reason,
        }


@dataclass
class VMInfo:
    name: str
    status: str
    id: str = ""
    pid: int | None = None
    accel: str = ""
    memory_mib: int | None = None
    vcpus: int | None = None
    created: float | None = None
    ready_ms: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class Toolstack:
    """The VM operations over one state dir. Safe to use from several processes at once."""

    def __init__(
        self,
        state_dir: Path | None = None,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
        extra_qemu_args: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        self.state = StateDir(state_dir)
        self.boot_timeout = boot_timeout
        # VM name -> more QEMU arguments (the XenStore baseline's store channel, lightvm/bench/xenstore/guest.py)
        self.extra_qemu_args = extra_qemu_args

    # ------------------------------------------------------------------ create

    def create(
        self,
        spec: VMSpec,
        name: str | None = None,
        count: int = 1,
        accel: str = "auto",
        jobs: int | None = None,
        progress: Callable[[CreateResult, int, int], None] | None = None,
    ) -> list[CreateResult]:
        """Create ``count`` VMs from ``spec`` (named NAME, or NAME-0..NAME-<count-1>).

        All or nothing: if one fails, every VM of this call is destroyed again.

        :raise SpecError: invalid name or device entries (nothing created).
        :raise ExistsError: a name is taken (nothing created).
        :raise AccelError: the accelerator cannot be used.
        :raise LightVMError: a step failed; the message names the VM and the step.
        """
        names = create_names(name or spec.name, count)
        self._validate_devices(spec)
        _check_host_memory(spec)
        choice = accelmod.select(accel)
        tsc_hz = hostfacts.tsc_hz()
        log(
            INFO,
            "lightvm.toolstack",
            "create %s: accel %s (%s)",
            ", ".join(names),
            choice.accel,
            choice.reason or "asked",
        )
        # The boot clock starts here: after the pure checks (spec, devices, accel verdict, the
        # cached TSC rate), at the first thing the create makes (one VM: its folder; with -n,
        # each VM's clock starts at its own first step after the batch's folders exist).
        t_start = time.perf_counter()
        self.state.ensure()
        vmdirs = self.state.allocate(names)
        results: list[CreateResult | None] = [None] * len(vmdirs)
        workers = max(1, min(jobs or os.cpu_count() or 1, len(vmdirs)))
        done = 0
        try:
            if workers == 1:
                for i, vmdir in enumerate(vmdirs):
                    t0 = t_start if len(vmdirs) == 1 else None
                    results[i] = self._create_one(vmdir, spec, choice, tsc_hz, t0)
                    done += 1
                    if progress:
                        progress(results[i], done, len(vmdirs))  # type: ignore[arg-type]
            else:
                done = self._create_parallel(vmdirs, spec, choice, tsc_hz, workers, results, progress)
        except BaseException:
            # All or nothing: the failed VM unwound itself; remove the ones that made it.
            for vmdir in vmdirs:
                with contextlib.suppress(Exception):
                    destroy_vmdir(vmdir, self.state.root)
            raise
        return [r for r in results if r is not None]

    def _create_parallel(
        self,
        vmdirs: list[VMDir],
        spec: VMSpec,
        choice: accelmod.AccelChoice,
        tsc_hz: int,
        workers: int,
        results: list[CreateResult | None],
        progress: Callable[[CreateResult, int, int], None] | None,
    ) -> int:
        # Imported here: concurrent.futures pulls in logging, ~10 ms the one-VM path need not pay.
        from concurrent.futures import ThreadPoolExecutor, as_completed

        done = 0
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="create") as pool:
            futures: dict[Future[CreateResult], int] = {
                pool.submit(self._create_one, vmdir, spec, choice, tsc_hz): i for i, vmdir in enumerate(vmdirs)
            }
            try:
                for future in as_completed(futures):
                    i = futures[future]
                    result = future.result()
                    results[i] = result
                    done += 1
                    if progress:
                        progress(result, done, len(vmdirs))
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return done

    def _validate_devices(self, spec: VMSpec) -> None:
        if spec.vifs:
            from lightvm.devices import net  # pyroute2 is slow to import: only when needed

            for i, vif in enumerate(spec.vifs):
                net.validate(vif, f"vifs[{i}]")
        for i, disk in enumerate(spec.disks):
            blk.validate(disk, f"disks[{i}]")

    def _create_one(
        self, vmdir: VMDir, spec: VMSpec, choice: accelmod.AccelChoice, tsc_hz: int, t0: float | None = None
    ) -> CreateResult:
        t0 = time.perf_counter() if t0 is None else t0
        accel = choice.accel
        vm_uuid = uuidlib.uuid4()
        vm_id = vm_uuid.hex[:16]
        ndev = 1 + len(spec.vifs) + len(spec.disks)
        record = VMRecord.new(vmdir.name, vm_id, str(vm_uuid), accel, region_size_for(ndev), spec.to_dict())
        vm = Instance(vmdir, record, self.state.root)
        with vm.steps(vmdir.name):
            region = vm.create_region(ndev)
            args, vif_configs, vbd_configs, netns = vm.prepare_devices(spec)
            extra = self.extra_qemu_args(vmdir.name) if self.extra_qemu_args else ()
            machine = vm.launch((*args, *extra), netns)
            vm.step = "write NoXS page"
            page = PageConfig(
                name=vmdir.name,
                uuid=vm_uuid,
                vifs=vif_configs,
                vbds=vbd_configs,
                tsc_hz=tsc_hz,
                nmi_doorbell=not spec.is_linux,  # Linux's init polls; an NMI only alarms the kernel
            )
            region.write_config(page)
            vm.step = "boot"
            from lightvm.boot import boot

            times, boot_record = boot(machine, region, t0, self.boot_timeout)
            boot_ms = times.as_dict()
            vm.up(VMStatus.RUNNING.value, boot_ms)
            network = str(record.devices.get("summary", ""))
            return CreateResult(
                vmdir.name, vm_id, accel, boot_ms, record.pid or 0, boot_record.app, network, choice.reason
            )

    # ------------------------------------------------------------------ destroy

    def destroy(self, name: str) -> None:
        """Stop the VM's QEMU (quit, then SIGKILL) and remove every trace of it.

        Works for every status, including ``incomplete`` folders left by a killed create.

        :raise NotFoundError: no such VM.
        """
        log(INFO, "lightvm.toolstack", "%s: destroy", name)
        destroy_vmdir(self.state.get(name), self.state.root)

    def destroy_all(self) -> list[str]:
        """Destroy every VM in the state dir; returns their names."""
        names = self.state.names()
        for n in names:
            with contextlib.suppress(LightVMError):
                self.destroy(n)
        # And what killed creates left in the jail (a uid taken by a process that died
        # before its VM's record named it): lightvm/jail.py, lightvm/cgroups.py.
        from lightvm import cgroups, jail

        jail.sweep_stale()
        cgroups.sweep()
        return names

    # ------------------------------------------------------------------ power

    def shutdown(self, name: str, keep: bool = False, timeout: float = 5.0) -> float:
        """Ask the guest to power off through its NoXS sysctl page, wait for QEMU to exit,
        then destroy the VM (unless ``keep``: it stays listed as ``halted``).

        :return: ms from the request to QEMU's exit.
        :raise StateError: the VM is not running or paused.
        :raise GuestError: the guest did not power off within ``timeout`` s (the VM is left as it was).
        """
        vmdir = self.state.get(name)
        record = self._record(vmdir)
        status = status_of(vmdir, record)
        if status not in (VMStatus.RUNNING, VMStatus.PAUSED):
            raise StateError(f"{name}: cannot shut down a VM that is {status.value} (use destroy)")
        machine = attach(vmdir, record, paused=status is VMStatus.PAUSED)
        try:
            t0 = time.perf_counter()
            with NoxsRegion.open(Path(record.noxs_path)) as region:
                region.request(Sysctl.POWEROFF)
                doorbell = region.rings_nmi_doorbell()
            try:
                if status is VMStatus.PAUSED:
                    machine.resume()  # a paused guest cannot act on the request
                if doorbell:  # wake the guest from hlt now rather than at its next idle tick
                    machine.qmp.execute("inject-nmi", timeout=1.0)
            except QMPError:
                pass  # QEMU may already be exiting; the wait below decides
            exited = machine.wait(timeout)
            elapsed = (time.perf_counter() - t0) * 1000
            if not exited:
                raise GuestError(
                    f"{name}: guest did not power off within {timeout:.1f} s; use `lightvm destroy {name}`"
                )
        finally:
            machine.release()
        if keep:
            record.state = VMStatus.HALTED.value
            record.exit_reason = "shutdown"
            vmdir.write(record)
            vmdir.qmp_path.unlink(missing_ok=True)
        else:
            destroy_vmdir(vmdir, self.state.root)
        return elapsed

    def pause(self, name: str) -> float:
        """Stop the VM's vCPUs. :return: ms taken. :raise StateError: not running."""
        return self._set_paused(name, True)

    def unpause(self, name: str) -> float:
        """Resume the VM's vCPUs. :return: ms taken. :raise StateError: not paused."""
        return self._set_paused(name, False)

    def _set_paused(self, name: str, paused: bool) -> float:
        t0 = time.perf_counter()
        vmdir = self.state.get(name)
        record = self._record(vmdir)
        status = status_of(vmdir, record)
        wanted = VMStatus.RUNNING if paused else VMStatus.PAUSED
        if status is not wanted:
            verb = "pause" if paused else "unpause"
            raise StateError(f"{name}: cannot {verb} a VM that is {status.value} (needs {wanted.value})")
        log(
            INFO,
            "lightvm.toolstack",
            "%s: %s (QMP %s)",
            name,
            "pause" if paused else "unpause",
            "stop" if paused else "cont",
        )
        machine = attach(vmdir, record, paused=not paused)
        try:
            if paused:
                machine.pause()
            else:
                resume_stamped(machine, record.noxs_path)  # the guest's TSC stood still meanwhile
        finally:
            machine.release()
        record.state = VMStatus.PAUSED.value if paused else VMStatus.RUNNING.value
        vmdir.write(record)
        return (time.perf_counter() - t0) * 1000

    # ------------------------------------------------------------------ queries

    def list(self) -> list[VMInfo]:
        """Every VM with its status, re-adopting live ones and reaping dead ones:
        a VM whose QEMU died is recorded as ``crashed`` (or ``halted`` after a clean
        guest poweroff) and its NoXS file and socket are freed; destroy removes the rest.
        """
        infos = []
        for n in self.state.names():
            vmdir = VMDir(self.state.vms_root / n)
            try:
                record = vmdir.read()
            except StateError as exc:
                infos.append(VMInfo(n, VMStatus.INCOMPLETE.value, detail=str(exc)))
                continue
            status = status_of(vmdir, record)
            if record is not None and status in (VMStatus.CRASHED, VMStatus.HALTED) and record.state != status.value:
                status = self._reap(vmdir, record)
            info = _info(n, status, record)
            if record is not None and record.pid is None and status is VMStatus.INCOMPLETE:
                info.pid = next(iter(unrecorded_qemus(record)), None)  # killed before it recorded the PID
            infos.append(info)
        return infos

    def _reap(self, vmdir: VMDir, record: VMRecord) -> VMStatus:
        status = VMStatus.CRASHED
        reason = "QEMU exited unexpectedly"
        try:
            with NoxsRegion.open(Path(record.noxs_path)) as region:
                boot_record = region.boot_record()
            if boot_record.state is BootState.HALTED:
                status, reason = VMStatus.HALTED, "guest powered off"
            elif boot_record.state is BootState.ERROR:
                reason = f"guest error {boot_record.error.name}: {boot_record.message}"
        except NoxsError:
            pass
        last = tail(vmdir.console_path, 300).splitlines()
        if status is VMStatus.CRASHED and last and last[-1].startswith("FATAL"):
            reason = last[-1]
        record.state = status.value
        record.exit_reason = reason
        vmdir.write(record)
        Path(record.noxs_path).unlink(missing_ok=True)
        vmdir.qmp_path.unlink(missing_ok=True)
        return status

    def info(self, name: str) -> dict[str, Any]:
        """Everything known about one VM: record, status, QEMU's runstate, live boot record.

        :raise NotFoundError: no such VM.
        """
        vmdir = self.state.get(name)
        infos = {i.name: i for i in self.list()}
        record = vmdir.read()
        out: dict[str, Any] = {
            "name": name,
            "status": infos[name].status if name in infos else "unknown",
            "folder": str(vmdir.path),
            "console": str(vmdir.console_path),
        }
        if record is None:
            return out
        out.update({k: v for k, v in vars(record).items() if k not in ("argv",)})
        exit_status = read_exit_status(vmdir, record)
        if exit_status is not None:
            out["exit_status"] = exit_status
        out["status"] = infos[name].status if name in infos else out["status"]
        if name in infos:
            out["pid"] = infos[name].pid  # also the PID of an incomplete VM's QEMU, found by list()
        out["argv"] = record.argv
        if out["status"] in (VMStatus.RUNNING.value, VMStatus.PAUSED.value):
            try:
                with NoxsRegion.open(Path(record.noxs_path)) as region:
                    br = region.boot_record()
                out["guest"] = {
                    "state": br.state.name,
                    "app": br.app,
                    "heartbeat": br.heartbeat,
                    "app_counter": br.app_counter,
                    "tsc_source": br.tsc_source.name,
                    "message": br.message,
                }
            except NoxsError as exc:
                out["guest"] = {"error": str(exc)}
            machine = attach(vmdir, record, paused=False)
            try:
                out["qemu_status"] = machine.query_status(timeout=1.0)
            except (QMPError, StateError) as exc:
                out["qemu_status"] = f"unknown ({exc})"
            finally:
                machine.release()
        return out

    def note_exit(self, name: str, pid: int, status: str) -> bool:
        """Remember how the QEMU ``pid`` of VM ``name`` ended (``status``: "killed by signal
        9 (SIGKILL)"), as lightvmd's watcher saw it: only the parent reaping QEMU (or a
        pidfd peek, daemon/events.py) can know it, and ``info`` with or without lightvmd
        shows it from this file. A file of its own, not a record field: the record is
        rewritten by other processes without a lock (reap, pause), which could drop it.
        False when the VM is gone or is another QEMU's now (destroyed and created again).
        """
        try:
            vmdir = self.state.get(name)
            record = vmdir.read()
        except LightVMError:
            return False
        if record is None or record.pid != pid:
            return False
        import json

        from lightvm.util import atomic_write

        try:
            atomic_write(vmdir.path / EXIT_FILE, json.dumps({"pid": pid, "status": status}))
        except OSError:
            return False  # destroyed meanwhile
        return True

    def console_path(self, name: str) -> Path:
        """:raise NotFoundError: no such VM."""
        return self.state.get(name).console_path

    def is_alive(self, name: str) -> bool:
        vmdir = self.state.get(name)
        return status_of(vmdir, vmdir.read()) in (VMStatus.RUNNING, VMStatus.PAUSED, VMStatus.CREATING)

    def _record(self, vmdir: VMDir) -> VMRecord:
        record = vmdir.read()
        if record is None:
            raise StateError(f"{vmdir.name}: incomplete VM (its create was interrupted); `lightvm destroy` it")
        return record


# ---------------------------------------------------------------------- helpers

EXIT_FILE = "exit.json"  # how the VM's QEMU ended, as lightvmd saw it (Toolstack.note_exit)


def read_exit_status(vmdir: VMDir, record: VMRecord) -> str | None:
    """The exit status :meth:`Toolstack.note_exit` kept for this record's QEMU, or None."""
    import json

    try:
        data = json.loads((vmdir.path / EXIT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("pid") != record.pid or not isinstance(data.get("status"), str):
        return None
    status: str = data["status"]
    return status


def _check_host_memory(spec: VMSpec) -> None:
    """:raise SpecError: if one guest wants more RAM than the host has at all."""
    try:
        with open("/proc/meminfo") as f:
            total_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return
    if spec.memory_mib * 1024 > total_kib:
        raise SpecError(
            f"{spec.source or 'spec'}: key 'memory': {spec.memory_mib} MiB is more than this host's "
            f"{total_kib // 1024} MiB of RAM"
        )


def _info(name: str, status: VMStatus, record: VMRecord | None) -> VMInfo:
    if record is None:
        return VMInfo(name, status.value, detail="create interrupted before the record was written")
    ready = (record.boot_ms or {}).get("ready")
    return VMInfo(
        name=name,
        status=status.value,
        id=record.id,
        pid=record.pid,
        accel=record.accel,
        memory_mib=record.spec.get("memory"),
        vcpus=record.spec.get("vcpus"),
        created=record.created,
        ready_ms=ready,
        detail=record.exit_reason or "",
    )


__all__ = ["CreateResult", "Toolstack", "VMInfo"]
