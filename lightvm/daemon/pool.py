"""Create shells: a create through lightvmd is only the "execute" half of one.

Starting QEMU and running a guest to where it needs its config is most of a cold
create, and none of it depends on the VM's identity. So it is done ahead of time, in
the pool's refill thread (:class:`lightvm.daemon.shells.ShellPool`): *prepare* spawns
one shell per flavour (kernel, firmware, memory, vCPUs, command line, accelerator), in
``STATE/pool/ID/`` with the files of a VM folder. A create takes one and *executes*
(:func:`execute_deferred`): writes the VM's identity into its NoXS page, wakes the
guest, renames the folder to ``vms/NAME`` under the state lock while it boots (a kill -9
at any point leaves either a shell, discarded by the next daemon, or a VM folder that
destroy cleans), waits for READY. A shell serves once; a failed execute destroys it.

Only specs without vifs and disks are poolable (pre-created taps attached at execute
are not implemented): the others take the cold path and say so (``path: cold``).

How far a shell is prepared is its *variant* (``--pool-variant``): ``waiting`` (the
default: the guest sleeps at its NOXS_FEAT_WAIT_CONFIG wait point until one byte on its
console FIFO wakes it, no QMP on the path), ``stopped`` (there too, vCPUs stopped, woken
by ``cont``) or ``paused`` (``-S``, the guest never ran; the fallback for a guest with
no wait point). Why ``waiting``, and the figures of all three: docs/lightvmd.md
("Prepared variants, measured").
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.daemon.shells import POOL_DIR, SHELL_OVERHEAD_MIB, ShellPool
from lightvm.errors import GuestError, LightVMError
from lightvm.instance import adopt, destroy, ensure_free, spawn_shell
from lightvm.machine import Machine
from lightvm.noxs import BootState, NoxsRegion, PageConfig
from lightvm.spec import VMSpec
from lightvm.state import StateDir, VMDir, VMRecord, VMStatus
from lightvm.toolstack import CreateResult
from lightvm.util import wait_until

PAUSED = "paused"  # prepared variant: QEMU spawned with -S, the guest never ran
WAITING = "waiting"  # the guest booted to its wait point, asleep there until the console bell
STOPPED = "stopped"  # the guest booted to its wait point, then its vCPUs were stopped (QMP)
VARIANTS = (PAUSED, WAITING, STOPPED)
TO_WAIT_POINT = (WAITING, STOPPED)  # the variants whose guest boots to its wait point at prepare
BELL_BYTE = b"\n"


@dataclass(frozen=True)
class Flavour:
    """What a shell must match to serve a create."""

    kernel: str
    firmware: str
    memory_mib: int
    vcpus: int
    cmdline: str
    accel: str

    @classmethod
    def of(cls, spec: VMSpec, accel: str) -> Flavour:
        return cls(
            # normpath, not resolve(): no syscalls on the execute path; both sides agree.
            kernel=os.path.normpath(os.path.abspath(spec.kernel)),
            firmware=os.path.normpath(os.path.abspath(spec.firmware)) if spec.firmware else "",
            memory_mib=spec.memory_mib,
            vcpus=spec.vcpus,
            cmdline=spec.cmdline,
            accel=accel,
        )

    def label(self) -> str:
        return f"{Path(self.kernel).name}/{self.memory_mib}M/{self.vcpus}cpu/{self.accel}"

    def cost_mib(self) -> int:
        return self.memory_mib + SHELL_OVERHEAD_MIB


def poolable(spec: VMSpec) -> str | None:
    """Why ``spec`` cannot use a shell, or None if it can."""
    if spec.vifs:
        return "vifs (pre-created taps are not implemented: cold path)"
    if spec.disks:
        return "disks (cold path)"
    if spec.is_linux:
        return "a Linux guest (Tinyx shells are not pooled yet: cold path)"
    return None


@dataclass
class Shell:
    id: str
    flavour: Flavour
    folder: Path
    machine: Machine
    region: NoxsRegion
    record: VMRecord
    prepared_at: float
    waited: bool = False  # booted to the wait point at prepare (variants WAITING, STOPPED)
    bell: int | None = None  # write end of the console FIFO: the guest sleeps until a byte comes

    def ring(self) -> float:
        """Wake the guest asleep at its wait point (one byte into its console's receiver);
        when it was rung (``time.perf_counter()``)."""
        assert self.bell is not None
        os.write(self.bell, BELL_BYTE)
        return time.perf_counter()

    def close_bell(self) -> None:
        bell, self.bell = self.bell, None
        if bell is not None:
            os.close(bell)

    def discard(self) -> None:
        """Kill its QEMU and remove its NoXS file and folder."""
        self.close_bell()
        with contextlib.suppress(Exception):
            self.machine.kill()
        with contextlib.suppress(Exception):
            self.region.close()
        self.region.unlink()
        shutil.rmtree(self.folder, ignore_errors=True)


def prepare_create_shell(root: Path, flavour: Flavour, spec: VMSpec, variant: str = PAUSED) -> Shell:
    """Spawn one paused QEMU for ``flavour`` (``spec`` is a VM of it) in ``root/ID`` and
    wait until QMP answers: a shell a create takes.

    ``variant`` :data:`WAITING` or :data:`STOPPED`: also boot the guest to its wait point
    (a placeholder page with NOXS_FEAT_WAIT_CONFIG). WAITING offers the console bell too:
    a guest that takes it sleeps there (BootState.WAITING_BELL) and the shell keeps the
    FIFO's write end to wake it; a guest that does not (BootState.WAITING, spinning) is
    stopped, as with STOPPED.

    :raise LightVMError: QEMU could not be started, or the guest did not reach its wait
        point (nothing is left behind).
    """
    bell: list[int] = []

    def to_wait_point(machine: Machine, region: NoxsRegion, shell_id: str) -> None:
        if variant in TO_WAIT_POINT:
            asleep = _boot_to_wait_point(machine, region, shell_id, console_bell=variant == WAITING)
            pipe = machine.config.console_pipe
            if asleep and pipe is not None:
                # QEMU holds the FIFO open for reading: this open neither blocks nor fails.
                bell.append(os.open(pipe.with_suffix(".in"), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
                _rehearse_bell(bell[0], region)

    vm = spawn_shell(
        root, spec.to_dict(), flavour.accel, devices=1, console_bell=variant == WAITING, then=to_wait_point
    )
    assert vm.machine is not None and vm.region is not None
    waited, prepared_at = variant in TO_WAIT_POINT, time.monotonic()
    return Shell(
        vm.record.id,
        flavour,
        vm.vmdir.path,
        vm.machine,
        vm.region,
        vm.record,
        prepared_at,
        waited,
        bell[0] if bell else None,
    )


def _rehearse_bell(bell: int, region: NoxsRegion, timeout: float = 1.0) -> None:
    """Ring once with the placeholder page unchanged: the guest wakes, finds nothing new
    and sleeps again, and QEMU has translated its wake-up path (interrupt entry and
    handler: first use costs ~0.3 ms under TCG) before a create needs it. The guest
    counts the interrupt in its heartbeat; a guest slow to do so is left as it is."""
    beat = region.boot_record().heartbeat
    os.write(bell, BELL_BYTE)
    wait_until(lambda: region.boot_record().heartbeat != beat, timeout=timeout, interval=0.0005, max_interval=0.01)


def _boot_to_wait_point(
    machine: Machine, region: NoxsRegion, shell_id: str, console_bell: bool, timeout: float = 10.0
) -> bool:
    """Run the guest to its NOXS_FEAT_WAIT_CONFIG wait point; True if it sleeps there on
    the console bell (``console_bell`` offered it), else stop its vCPUs and return False.

    The placeholder page carries no identity (a neutral name, the nil UUID); execute
    rewrites every field of it.

    :raise GuestError: the guest went past the wait point (no FEAT_WAIT_CONFIG support),
        failed, or did not get there in time.
    """
    from lightvm.hostfacts import tsc_hz

    # The TSC rate lets the guest rehearse its clock set-up at the wait point (noxs.c).
    page = PageConfig(
        name=f"pool-{shell_id}", uuid=uuidlib.UUID(int=0), tsc_hz=tsc_hz(), wait_config=True, console_bell=console_bell
    )
    region.write_config(page)
    machine.resume(wait=True, timeout=timeout)
    waiting = (int(BootState.WAITING), int(BootState.WAITING_BELL))
    past = (int(BootState.READY), int(BootState.ERROR), int(BootState.HALTED))

    def there() -> int | None:
        state = region.boot_state()
        if state in waiting or state in past or not machine.is_running():
            return state + 1  # truthy even for 0
        return None

    state = wait_until(there, timeout=timeout, interval=0.0005, max_interval=0.01)
    if state is None or state - 1 not in waiting:
        what = "did not reach it in time" if state is None else f"is in state {state - 1} instead"
        raise GuestError(f"pool shell {shell_id}: guest has no NOXS_FEAT_WAIT_CONFIG wait point ({what})")
    if console_bell and state - 1 == int(BootState.WAITING_BELL):
        return True
    machine.pause(timeout=timeout)
    return False


def execute_deferred(
    shell: Shell,
    state: StateDir,
    spec: VMSpec,
    name: str,
    tsc_hz: int,
    t0: float,
    timeout: float,
) -> tuple[CreateResult, Callable[[], None]]:
    """The execute phase: give ``shell`` the identity ``name`` and boot it to READY; the
    bookkeeping is the returned ``finish()``. The shell is consumed whatever happens
    (destroyed on failure).

    Why deferred: the final record write replaces vm.json, and a rename over an existing
    file on ext4 (auto_da_alloc; /run is ext4 on these hosts) costs 0.3-0.9 ms, a quarter
    of the execute path. The daemon answers first and calls ``finish()`` right after; until
    then the VM lists as ``creating`` (its marker), and destroy/info/pause of that name
    wait for ``finish()`` (lightvm/daemon/server.py). A killed daemon leaves a complete enough
    folder: the shell's record already names the PID and the NoXS file.

    :raise ExistsError: ``name`` is taken (the shell is discarded, never reused).
    :raise GuestError: the guest failed to boot.
    """
    from lightvm.boot import boot

    vm_uuid = uuidlib.uuid4()
    target = state.vms_root / name
    machine = shell.machine

    def claim() -> None:
        # While the guest boots: the folder becomes the VM's, under the state lock (a
        # one-shot create may have taken the name since the check below).
        shell.folder = adopt(state, shell.folder, name, machine).path

    try:
        ensure_free(state, name)  # the usual refusal, before the guest ever sees the name
        shell.region.write_config(PageConfig(name=name, uuid=vm_uuid, tsc_hz=tsc_hz, nmi_doorbell=True))
        woken_at = shell.ring() if shell.bell is not None else None
        times, boot_record = boot(machine, shell.region, t0, timeout, woken_at, meanwhile=claim)
        if shell.waited:
            times.guest_entry = None  # the guest entered at prepare time, not in this create
    except BaseException:
        shell.discard()
        raise
    created, age_s, boot_ms = time.time(), round(time.monotonic() - shell.prepared_at, 3), times.as_dict()
    record = shell.record

    def finish() -> None:
        # The record is completed here, after the reply: only what the reply says is
        # computed before it.
        try:
            record.name = name
            record.uuid = str(vm_uuid)
            record.created = created
            record.spec = spec.with_name(name).to_dict() if spec.name != name else spec.to_dict()
            record.state = VMStatus.RUNNING.value
            record.boot_ms = boot_ms
            record.devices["pool"] = {"shell": shell.id, "age_s": age_s}
            vmdir = VMDir(target)
            vmdir.write(record)
            vmdir.mark_created()
        except OSError:
            pass  # destroyed meanwhile (a one-shot destroy does not wait for us): nothing to record
        finally:
            shell.close_bell()
            machine.release()
            shell.region.close()

    return CreateResult(name, record.id, record.accel, boot_ms, record.pid or 0, boot_record.app), finish


class Pool(ShellPool[Flavour, Shell]):
    """Create shells for a set of flavours: at most ``size`` per flavour, ``max_shells`` in
    all, their worst-case memory (:meth:`Flavour.cost_mib`) within ``memory_budget_mib``."""

    def __init__(
        self,
        state: StateDir,
        specs: list[tuple[VMSpec, str]],
        size: int = 4,
        max_shells: int = 64,
        memory_budget_mib: int = 2048,
        log: Callable[[str], None] = lambda _msg: None,
        variant: str = WAITING,
    ) -> None:
        if variant not in VARIANTS:
            raise LightVMError(f"pool variant {variant!r}: one of {', '.join(VARIANTS)}")
        super().__init__(state, size, log)
        self.variant = variant
        self.max_shells = max(0, max_shells)
        self.memory_budget_mib = max(0, memory_budget_mib)
        self.flavours: dict[Flavour, VMSpec] = {}
        for spec, accel in specs:
            why = poolable(spec)
            if why:
                raise LightVMError(f"{spec.source or spec.name}: cannot pool a VM with {why}")
            self.flavours.setdefault(Flavour.of(spec, accel), spec)
        self._shells = {f: deque() for f in self.flavours}
        self._preparing = dict.fromkeys(self.flavours, 0)
        self._paused_only: set[Flavour] = set()

    def start(self) -> None:
        """Discard what a previous daemon left in the pool folder, then start refilling."""
        discard_orphans(self.state)
        super().start()

    def stop(self) -> None:
        super().stop()
        discard_orphans(self.state)

    def take(self, spec: VMSpec, accel: str) -> Shell | None:
        """A prepared shell for ``spec`` (removed from the pool), or None: use the cold path.

        A shell comes with the pool marked busy (no refill spawns while its guest boots):
        the caller must call :meth:`done` once its execute is over, whatever happened.
        """
        if poolable(spec):
            return None
        return self._take(Flavour.of(spec, accel))

    def wait_full(self, timeout: float) -> bool:
        """Wait until every flavour has its shells (or the bounds stop it); True if so."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._next() is None:
                    return True
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "size": self.size,
                "max_shells": self.max_shells,
                "memory_budget_mib": self.memory_budget_mib,
                "memory_committed_mib": self._committed_mib(),
                "variant": self.variant,
                "flavours": [
                    {
                        "flavour": f.label(),
                        "ready": len(q),
                        "preparing": self._preparing[f],
                        "variant": self._variant_of(f),
                    }
                    for f, q in self._shells.items()
                ],
                "taken": self.stats_taken,
                "missed": self.stats_missed,
                "prepared": self.stats_prepared,
                "failed": self.stats_failed,
                "last_error": self.last_error,
            }

    def shell_pids(self) -> list[int]:
        return self.pids()

    def _refills(self) -> bool:
        return bool(self.flavours and self.size)

    def _next(self) -> Flavour | None:
        """The emptiest flavour below its size that the bounds allow one more shell of."""
        best: Flavour | None = None
        best_have = self.size
        for f in self._shells:
            have = self._have(f)
            if have >= best_have:
                continue
            if self._count() + 1 > self.max_shells:
                return None
            if self._committed_mib() + f.cost_mib() > self.memory_budget_mib:
                continue
            best, best_have = f, have
        return best

    def _variant_of(self, flavour: Flavour) -> str:
        return PAUSED if flavour in self._paused_only else self.variant

    def _prepare(self, flavour: Flavour) -> Shell:
        return prepare_create_shell(self.root, flavour, self.flavours[flavour], self._variant_of(flavour))

    def _prepare_failed(self, flavour: Flavour, exc: Exception) -> None:
        if isinstance(exc, GuestError) and self._variant_of(flavour) in TO_WAIT_POINT:
            # A guest without the wait point (an older image, another kernel): this
            # flavour gets paused shells instead, which every guest supports.
            self._paused_only.add(flavour)
            self.log(f"pool: {flavour.label()}: {exc}; using paused shells for it")
        else:
            super()._prepare_failed(flavour, exc)


def discard_orphans(state: StateDir) -> list[str]:
    """Kill and remove every shell in ``STATE/pool`` (left by a killed daemon); their names."""
    root = state.root / POOL_DIR
    try:
        entries = [e for e in os.scandir(root) if e.is_dir()]
    except FileNotFoundError:
        return []
    for entry in entries:
        destroy(VMDir(Path(entry.path)), None, hard=True)
    return [e.name for e in entries]


__all__ = [
    "POOL_DIR",
    "SHELL_OVERHEAD_MIB",
    "Flavour",
    "Pool",
    "Shell",
    "discard_orphans",
    "execute_deferred",
    "poolable",
    "prepare_create_shell",
]
