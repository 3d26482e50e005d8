"""The split toolstack: prepared VM shells per flavour, so that a create is only "execute".

Prepare (ahead of time, in a background thread): a *shell* is one QEMU spawned paused
(``-S``) with the flavour's kernel loaded, its NoXS region created and mapped, QMP
connected and ``qmp_capabilities`` answered. It lives in ``STATE/pool/ID/`` (the same
files as a VM folder: vm.json naming its PID and NoXS file, qmp.sock, console.log,
qemu.log) until a create takes it.

Execute (per create, on the caller's thread):

1. write the VM's identity (name, a fresh UUID) and device config into the page (a
   fresh page: the placeholder carried no identity)
2. start the guest: ring its bell (variant ``waiting``) or ``cont`` (the others)
3. while it boots, under the state lock, check the name is free and rename
   ``pool/ID`` to ``vms/NAME`` (the folder, its ``creating`` marker and its record move
   in one step, so a kill -9 at any point leaves a VM folder that destroy cleans, never
   a half-owned shell; a daemon killed before the rename leaves a shell, discarded at
   its next start)
4. poll the boot record until READY (:func:`lightvm.boot.boot`)
5. write the final record, drop the ``creating`` marker, let go of QEMU

A shell is used once: taking it removes it from the pool; a failed execute destroys it.

Flavour = (kernel, firmware, memory, vCPUs, command line, accelerator). Only specs
without vifs and disks are poolable for now (pre-created taps attached at execute are
not implemented): those creates take the cold path, and say so (``path: cold``).

Bounds: at most ``size`` shells per flavour, ``max_shells`` in all, and the sum of
the shells' worst-case memory (guest RAM + :data:`SHELL_OVERHEAD_MIB`) within
``memory_budget_mib``. The refill thread never spawns while an execute is in flight
(QEMU start-up would steal the CPU the booting guest needs), and never holds the pool
lock while it spawns, so the execute path waits on nothing but its own guest.

Prepared variants (``--pool-variant``), both implemented and measured side by side
(``python -m lightvm.bench.split --variant ...``, TCG, 30 samples, same host):

* ``waiting`` (default): at prepare, a placeholder page with NOXS_FEAT_WAIT_CONFIG and
  NOXS_FEAT_CONSOLE_BELL is written and the guest runs to its wait point
  (images/base/noxs.c), where it enables its console UART's receive interrupt, reports
  BootState.WAITING_BELL and sleeps in ``hlt``: QEMU keeps running and costs no CPU.
  The console is a pipe chardev (MachineConfig.console_pipe): execute rewrites the page
  and writes one byte into the FIFO ``console.in``, which wakes the guest without a QMP
  round trip. One rehearsal ring at prepare has QEMU translate the wake-up path. A
  guest without the bell reports BootState.WAITING (spinning) and is stopped instead.
* ``stopped``: the guest runs to its wait point (BootState.WAITING), then QMP ``stop``;
  execute resumes it with ``cont``.
* ``paused``: QEMU spawned with ``-S``, the guest never ran.

Measured side by side: docs/lightvmd.md ("Prepared variants"). A flavour whose guest
has no wait point (it goes past it) falls back to ``paused``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
SHELL_OVERHEAD_MIB = 16  # host memory of one idle QEMU beyond guest RAM (QEMU-NOTES: ~16 MiB)
POOL_DIR = "pool"
RETRY_AFTER_FAILURE = 2.0


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


class Pool:
    """Prepared shells for a set of flavours, refilled by one background thread."""

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
        self.variant = variant
        self.state = state
        self.root = state.root / POOL_DIR
        self.size = max(0, size)
        self.max_shells = max(0, max_shells)
        self.memory_budget_mib = max(0, memory_budget_mib)
        self.log = log
        self.flavours: dict[Flavour, VMSpec] = {}
        for spec, accel in specs:
            why = poolable(spec)
            if why:
                raise LightVMError(f"{spec.source or spec.name}: cannot pool a VM with {why}")
            self.flavours.setdefault(Flavour.of(spec, accel), spec)
        self._shells: dict[Flavour, deque[Shell]] = {f: deque() for f in self.flavours}
        self._preparing: dict[Flavour, int] = dict.fromkeys(self.flavours, 0)
        self._cond = threading.Condition()
        self._busy = 0
        self._paused_only: set[Flavour] = set()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.stats_taken = 0
        self.stats_missed = 0
        self.stats_prepared = 0
        self.stats_failed = 0
        self.last_error = ""

    # -- lifetime --

    def start(self) -> None:
        """Discard what a previous daemon left in the pool folder, then start refilling."""
        discard_orphans(self.state)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.flavours and self.size:
            self._thread = threading.Thread(target=self._refill_loop, name="pool-refill", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop refilling and discard every prepared shell (their QEMUs, NoXS files, folders)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
        with self._cond:
            shells = [s for q in self._shells.values() for s in q]
            for q in self._shells.values():
                q.clear()
        for shell in shells:
            shell.discard()
        discard_orphans(self.state)

    # -- execute side --

    def take(self, spec: VMSpec, accel: str) -> Shell | None:
        """A prepared shell for ``spec`` (removed from the pool), or None: use the cold path.

        A shell comes with the pool marked busy (no refill spawns while its guest boots):
        the caller must call :meth:`done` once its execute is over, whatever happened.
        """
        if poolable(spec):
            return None
        flavour = Flavour.of(spec, accel)
        with self._cond:
            queue = self._shells.get(flavour)
            while queue:
                shell = queue.popleft()
                if shell.machine.is_running():
                    self.stats_taken += 1
                    self._busy += 1  # in the same critical section: the refill cannot slip in
                    return shell
                self.log(f"pool: shell {shell.id} died while waiting; discarded")
                threading.Thread(target=shell.discard, daemon=True).start()
            self.stats_missed += 1
            self._cond.notify_all()
        return None

    def done(self) -> None:
        """An execute that took a shell is over: the refill may run again."""
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def wait_full(self, timeout: float) -> bool:
        """Wait until every flavour has its shells (or the bounds stop it); True if so."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                if self._next_flavour() is None:
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
        with self._cond:
            return [s.record.pid for q in self._shells.values() for s in q if s.record.pid]

    # -- refill side --

    def _count(self) -> int:
        return sum(len(q) for q in self._shells.values()) + sum(self._preparing.values())

    def _committed_mib(self) -> int:
        return sum(f.cost_mib() * (len(q) + self._preparing[f]) for f, q in self._shells.items())

    def _next_flavour(self) -> Flavour | None:
        """The emptiest flavour below its size that the bounds allow one more shell of."""
        best: Flavour | None = None
        best_have = self.size
        for f, q in self._shells.items():
            have = len(q) + self._preparing[f]
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

    def _refill_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (self._busy or self._next_flavour() is None):
                    self._cond.wait(0.5)
                if self._stopping:
                    return
                flavour = self._next_flavour()
                if flavour is None:
                    continue
                self._preparing[flavour] += 1
            failed = False
            try:
                shell = prepare_create_shell(self.root, flavour, self.flavours[flavour], self._variant_of(flavour))
            except GuestError as exc:
                failed = True
                if self._variant_of(flavour) in TO_WAIT_POINT:
                    # A guest without the wait point (an older image, another kernel): this
                    # flavour gets paused shells instead, which every guest supports.
                    self._paused_only.add(flavour)
                    self.log(f"pool: {flavour.label()}: {exc}; using paused shells for it")
                else:
                    self.last_error = f"{flavour.label()}: {exc}"
                    self.log(f"pool: cannot prepare a shell: {self.last_error}")
            except Exception as exc:  # the daemon must outlive a broken flavour
                failed = True
                self.last_error = f"{flavour.label()}: {exc}"
                self.log(f"pool: cannot prepare a shell: {self.last_error}")
            with self._cond:
                self._preparing[flavour] -= 1
                if failed:
                    self.stats_failed += 1
                else:
                    if self._stopping:
                        discard = shell
                    else:
                        self._shells[flavour].append(shell)
                        self.stats_prepared += 1
                        discard = None
                self._cond.notify_all()
            if not failed and discard is not None:
                discard.discard()
            if failed:
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, RETRY_AFTER_FAILURE)


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
    "SHELL_OVERHEAD_MIB",
    "Flavour",
    "Pool",
    "Shell",
    "discard_orphans",
    "execute_deferred",
    "poolable",
    "prepare_create_shell",
]
