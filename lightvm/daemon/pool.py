"""Create shells: a create through lightvmd is only the "execute" half of one.

Starting QEMU and running a guest to where it needs its config is most of a cold
create, and none of it depends on the VM's identity. So it is done ahead of time, by
the pool's refill workers (:class:`lightvm.daemon.shells.ShellPool`): *prepare* spawns
shells of each flavour (kernel, firmware, memory, vCPUs, command line, accelerator), as
many as its demand needs (:mod:`lightvm.daemon.adaptive`), in ``STATE/pool/ID/`` with
the files of a VM folder. A create takes one and *executes*
(:func:`lightvm.daemon.execute.execute_deferred`): writes the VM's identity into its
NoXS page, wakes the guest, renames the folder to ``vms/NAME`` under the state lock
while it boots (a kill -9 at any point leaves either a shell, discarded by the next
daemon, or a VM folder that destroy cleans), waits for READY. A shell serves once; a
failed execute destroys it.

A shell may have NICs, made at prepare and given to the VM at execute: taps of its own
(the address from the network's allocator, the bridge and MTU set then) or QEMU user
netdevs (the VM's port forwards added then); the vif's MAC goes in the page and the guest
pairs its device by the device's own MAC (lightvm/devices/shellnet.py). Disks are
placeholders at prepare, the VM's images at execute (lightvm/devices/shellblk.py). Specs
with vifs of both kinds take the cold path and say why (``path: cold (REASON)``,
:func:`lightvm.daemon.flavour.poolable`).

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
import threading
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightvm import cgroups, jail
from lightvm.daemon import pool_nics
from lightvm.daemon.adaptive import DEFAULT_IDLE_S, AdaptivePolicy
from lightvm.daemon.flavour import Flavour, poolable, unpoolable_forwards
from lightvm.daemon.shells import POOL_DIR, SHELL_OVERHEAD_MIB, ShellPool
from lightvm.errors import AddressExhaustedError, GuestError, LightVMError, NotFoundError
from lightvm.instance import BELL_BYTE, Instance, destroy, open_console_bell, spawn_shell
from lightvm.machine import Machine
from lightvm.noxs import BootState, NoxsRegion, PageConfig, VifConfig
from lightvm.spec import VMSpec
from lightvm.state import StateDir, VMDir, VMRecord
from lightvm.util import wait_until

if TYPE_CHECKING:
    from lightvm.devices.net import NetContext, PreparedVif

PAUSED = "paused"  # prepared variant: QEMU spawned with -S, the guest never ran
WAITING = "waiting"  # the guest booted to its wait point, asleep there until the console bell
STOPPED = "stopped"  # the guest booted to its wait point, then its vCPUs were stopped (QMP)
VARIANTS = (PAUSED, WAITING, STOPPED)
TO_WAIT_POINT = (WAITING, STOPPED)  # the variants whose guest boots to its wait point at prepare
# A create that finds no ready shell waits at most this long for one being prepared
# (shells.ShellPool._take): longer means that prepare is stuck, and the cold path is surer.
TAKE_WAIT_S = 0.5
FLAVOUR_CACHE_MAX = 256  # specs remembered by Pool.take (as many as the daemon's spec cache)


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
    nics: list[PreparedVif] = field(default_factory=list)  # its NICs (shellnet.make_taps or user_nics)
    state_root: Path | None = None  # whose networks its taps join (with tap NICs)
    take_ms: float = 0.0  # how long the create that took it waited for it (Pool.take)
    leased: list[PreparedVif] = field(default_factory=list)  # its taps' addresses, if leased at prepare

    def ring(self, yield_cpu: bool = True) -> float:
        """Wake the guest asleep at its wait point (one byte into its console's receiver);
        when it was rung (``time.perf_counter()``).

        ``yield_cpu``: then yield the CPU. The scheduler often queues QEMU's main loop,
        which delivers the bell, on this very CPU (wake-affine) while the other one idles,
        and it then waited for the daemon's Python to block: traced (python -m
        lightvm.bench.ringtrace), bell -> QEMU reading the byte took 232 us (median) in
        those creates, 50 us with the yield (docs/execute-path.md). Not when port forwards
        are queued right after (user networking): QEMU's main loop then runs them at once,
        under the big lock the woken vCPU needs (splitnic --net user: 2.05-2.15 ms without
        the yield, 2.11-2.50 with it). A no-op when nothing else waits for this CPU.
        """
        assert self.bell is not None
        os.write(self.bell, BELL_BYTE)
        if yield_cpu:
            os.sched_yield()
        return time.perf_counter()

    def close_bell(self) -> None:
        bell, self.bell = self.bell, None
        if bell is not None:
            os.close(bell)

    def discard(self) -> None:
        """Kill its QEMU and remove its taps, NoXS file and folder."""
        self.close_bell()
        with contextlib.suppress(Exception):
            self.machine.kill()
        with contextlib.suppress(Exception):
            self.region.close()
        taps = [n for n in self.nics if n.tap]
        if taps and self.state_root is not None:
            from lightvm.devices import net, shellnet

            with contextlib.suppress(LightVMError), net.NetContext.open(self.state_root) as ctx:
                shellnet.delete_taps(taps, ctx)
                if self.leased:
                    ctx.store().release(self.id)
        self.region.unlink()
        jail.release_vm(self.record.id)
        cgroups.release(self.record.id)
        shutil.rmtree(self.folder, ignore_errors=True)


def prepare_create_shell(
    root: Path, flavour: Flavour, spec: VMSpec, variant: str = PAUSED, state_root: Path | None = None
) -> Shell:
    """Spawn one paused QEMU for ``flavour`` (``spec`` is a VM of it) in ``root/ID`` and
    wait until QMP answers: a shell a create takes.

    ``variant`` :data:`WAITING` or :data:`STOPPED`: also boot the guest to its wait point
    (a placeholder page with NOXS_FEAT_WAIT_CONFIG). WAITING offers the console bell too:
    a guest that takes it sleeps there (BootState.WAITING_BELL) and the shell keeps the
    FIFO's write end to wake it; a guest that does not (BootState.WAITING, spinning) is
    stopped, as with STOPPED. ``flavour.nics``: the shell gets that many NICs of
    ``flavour.nic_mode``, its own taps in ``state_root``'s networking or user netdevs
    (lightvm/devices/shellnet.py); with ``flavour.networks`` its taps lease their
    addresses and join their bridges now (the lease undone with the shell if a later
    step fails), and the placeholder page carries those addresses.

    :raise LightVMError: QEMU could not be started, or the guest did not reach its wait
        point (nothing is left behind).
    """
    bell: list[int] = []
    leased: list[PreparedVif] = []

    def to_wait_point(vm: Instance) -> None:
        machine, region, shell_id = vm.machine, vm.region, vm.record.id
        assert machine is not None and region is not None
        if flavour.networks:
            from lightvm.devices import net, shellnet

            assert state_root is not None  # taps need it (spawn_shell refused otherwise)
            taps = [net.PreparedVif.from_dict(v) for v in vm.record.devices["vifs"]]
            # A network made after lightvmd started, or full: this shell leases at execute
            # instead (which says why it cannot, if it still cannot); the next one tries again.
            with net.NetContext.open(state_root) as ctx, contextlib.suppress(NotFoundError, AddressExhaustedError):
                leased.extend(shellnet.lease_taps(taps, flavour.networks, shell_id, ctx, vm.undo))
        if variant in TO_WAIT_POINT:
            asleep = _boot_to_wait_point(
                machine,
                region,
                shell_id,
                console_bell=variant == WAITING,
                vifs=pool_nics.placeholder_vifs(shell_id, flavour.nics, flavour.nic_mode, leased),
            )
            pipe = machine.config.console_pipe
            if asleep and pipe is not None:
                # QEMU holds the FIFO open for reading: this open neither blocks nor fails.
                bell.append(open_console_bell(pipe))
                _rehearse_bell(bell[0], region)

    vm = spawn_shell(
        root,
        spec.to_dict(),
        flavour.accel,
        devices=1 + flavour.nics + len(flavour.disks),
        console_bell=variant == WAITING,
        then=to_wait_point,
        nics=flavour.nics,
        disks=flavour.disks,
        state_root=state_root,
        nic_mode=flavour.nic_mode or "tap",
    )
    assert vm.machine is not None and vm.region is not None
    waited, prepared_at = variant in TO_WAIT_POINT, time.monotonic()
    nics = []
    if flavour.nics:
        from lightvm.devices.net import PreparedVif

        nics = [PreparedVif.from_dict(v) for v in vm.record.devices.get("vifs", ())]
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
        nics,
        state_root,
        leased=leased,
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
    machine: Machine,
    region: NoxsRegion,
    shell_id: str,
    console_bell: bool,
    timeout: float = 10.0,
    vifs: list[VifConfig] | None = None,
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
        name=f"pool-{shell_id}",
        uuid=uuidlib.UUID(int=0),
        tsc_hz=tsc_hz(),
        wait_config=True,
        console_bell=console_bell,
        vifs=vifs or [],
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


class Pool(ShellPool[Flavour, Shell]):
    """Create shells for a set of flavours, as many of each as its demand needs
    (:class:`lightvm.daemon.adaptive.AdaptivePolicy`): at least ``size`` per flavour,
    at most ``max_shells`` per flavour and in all, their worst-case memory
    (:meth:`Flavour.cost_mib`) within ``memory_budget_mib``; ``parallel`` prepares at
    once; a target above its floor falls back after ``idle_s`` s below its peak."""

    def __init__(
        self,
        state: StateDir,
        specs: list[tuple[VMSpec, str]],
        size: int = 4,
        max_shells: int = 64,
        memory_budget_mib: int = 2048,
        log: Callable[[str], None] = lambda _msg: None,
        variant: str = WAITING,
        idle_s: float = DEFAULT_IDLE_S,
        parallel: int | None = None,
        take_wait_s: float = TAKE_WAIT_S,
    ) -> None:
        if variant not in VARIANTS:
            raise LightVMError(f"pool variant {variant!r}: one of {', '.join(VARIANTS)}")
        super().__init__(state, size, log)
        self.variant = variant
        self.net_mode = _net_mode()
        self.last_path = ""  # of the last create through the daemon: "pool" or "cold (REASON)"
        self._net_lock = threading.Lock()
        self._net: NetContext | None = None
        self.max_shells = max(0, max_shells)
        self.memory_budget_mib = max(0, memory_budget_mib)
        self.flavours: dict[Flavour, VMSpec] = {}
        for spec, accel in specs:
            why = poolable(spec, self.net_mode)
            if why:
                raise LightVMError(f"{spec.source or spec.name}: cannot pool a VM with {why}")
            self.flavours.setdefault(Flavour.of(spec, accel, self.net_mode), spec)
        self._shells = {f: deque() for f in self.flavours}
        self._preparing = dict.fromkeys(self.flavours, 0)
        self._paused_only: set[Flavour] = set()
        self.policy: AdaptivePolicy[Flavour] = AdaptivePolicy(self.size, self.max_shells, idle_s, parallel)
        self.take_wait_s = max(0.0, take_wait_s)
        # (id(spec), accel) -> (spec, why not poolable, flavour): the daemon's spec cache hands
        # out the same VMSpec while its files are unchanged, and on the execute path these two
        # cost ~40 us of Python per create (docs/execute-path.md). The spec is kept alive
        # in the entry, so its id is not reused while cached.
        self._flavour_of: dict[tuple[int, str], tuple[VMSpec, str | None, Flavour]] = {}

    def why_cold(self, spec: VMSpec, accel: str) -> str:
        """Why a create of ``spec`` took the cold path (after :meth:`take` gave no shell)."""
        why = poolable(spec, self.net_mode)
        if why:
            return why
        flavour = Flavour.of(spec, accel, self.net_mode)
        if flavour not in self._shells:
            return f"no pool of flavour {flavour.label()} (lightvm daemon start --pool CONFIG)"
        return f"the pool of {flavour.label()} was empty (--pool-size, or creates faster than refills)"

    def start(self) -> None:
        """Discard what a previous daemon left in the pool folder, then start refilling."""
        discard_orphans(self.state)
        super().start()

    def stop(self) -> None:
        super().stop()
        discard_orphans(self.state)
        with self._net_lock:
            if self._net is not None:
                self._net.close()
                self._net = None

    @contextlib.contextmanager
    def net_context(self) -> Iterator[NetContext]:
        """The networking context executes hand shells' taps over in, kept open: building
        one is a netlink socket made inside the namespace (~1 ms, docs/qemu-notes.md), a
        third of a pooled create. A Devd serves one thread at a time, hence the lock (held
        for the hand-over only, not the boot)."""
        from lightvm.devices import net

        with self._net_lock:
            if self._net is None:
                self._net = net.NetContext.open(self.state.root)
            # Inside the namespace (if any) for the block: pyroute2's IPRoute keeps per-thread
            # state and, used from another thread than the one that made it, netlinks in that
            # thread's namespace (measured: EOPNOTSUPP attaching to a bridge index of ours).
            with self._net.inside():
                yield self._net

    def take(self, spec: VMSpec, accel: str, config_spec: VMSpec | None = None) -> Shell | None:
        """A prepared shell for ``spec`` (removed from the pool), or None: use the cold path.

        ``config_spec``: ``spec`` as its config file gave it, before the request's
        ``--publish`` forwards were added (they change nothing in a shell). The flavour and
        the verdict are kept per config spec (the daemon's spec cache hands out the same
        object while the files are unchanged): keyed by ``spec``, a create with ``--publish``
        (a new spec object each time) worked them out again on every create, ~0.1 ms of a
        pooled daytime's execute with user networking (docs/pool-nic-figures.md).

        A shell comes with the pool marked busy (no refill spawns while its guest boots):
        the caller must call :meth:`done` once its execute is over, whatever happened.
        """
        config_spec = spec if config_spec is None else config_spec
        key = (id(config_spec), accel)
        known = self._flavour_of.get(key)
        if known is None or known[0] is not config_spec:
            if len(self._flavour_of) >= FLAVOUR_CACHE_MAX:
                self._flavour_of.clear()
            flavour = Flavour.of(config_spec, accel, self.net_mode)
            known = self._flavour_of[key] = (config_spec, poolable(config_spec, self.net_mode), flavour)
        if known[1] or (spec is not config_spec and unpoolable_forwards(spec)):
            return None
        t0 = time.perf_counter()
        shell = self._take(known[2], self.take_wait_s)
        if shell is not None:
            shell.take_ms = (time.perf_counter() - t0) * 1000
        return shell

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
                "idle_s": self.policy.idle_s,
                "parallel": self.policy.parallel,
                "memory_budget_mib": self.memory_budget_mib,
                "memory_committed_mib": self._committed_mib(),
                "variant": self.variant,
                "flavours": [
                    {
                        "flavour": f.label(),
                        "ready": len(q),
                        "preparing": self._preparing[f],
                        "variant": self._variant_of(f),
                        **self.policy.stats(f),
                    }
                    for f, q in self._shells.items()
                ],
                "taken": self.stats_taken,
                "missed": self.stats_missed,
                "prepared": self.stats_prepared,
                "failed": self.stats_failed,
                "last_error": self.last_error,
                "last_path": self.last_path,
            }

    def shell_pids(self) -> list[int]:
        return self.pids()

    def _refills(self) -> bool:
        return bool(self.flavours and self.size)

    def _workers(self) -> int:
        return self.policy.parallel

    def _next(self) -> Flavour | None:
        """The flavour furthest below its target that the bounds allow one more shell of
        (the policy's plan; the number of refill workers bounds the prepares at once)."""
        have = {f: (len(q), self._preparing[f]) for f, q in self._shells.items()}
        cost = {f: f.cost_mib() for f in self._shells}
        plan = self.policy.plan(have, cost, self.memory_budget_mib, self.max_shells)
        return plan[0] if plan else None

    def _took(self, flavour: Flavour, hit: bool, waited: bool) -> None:
        if flavour in self._shells:
            self.policy.on_take(flavour, hit, waited)

    def _prepared(self, flavour: Flavour, seconds: float) -> None:
        self.policy.on_prepared(flavour, seconds)

    def _surplus(self) -> list[Shell]:
        """Ready shells above their flavour's target, oldest first (the queue's left end)."""
        out: list[Shell] = []
        for f, q in self._shells.items():
            extra = self.policy.surplus(f, len(q), self._preparing[f])
            if extra:
                out += [q.popleft() for _ in range(extra)]
                self.policy.on_shrunk(f, extra)
                self.log(
                    f"pool: {f.label()}: idle, {extra} surplus shell(s) destroyed (target {self.policy.target(f)})"
                )
        return out

    def _variant_of(self, flavour: Flavour) -> str:
        return PAUSED if flavour in self._paused_only else self.variant

    def _prepare(self, flavour: Flavour) -> Shell:
        return prepare_create_shell(
            self.root, flavour, self.flavours[flavour], self._variant_of(flavour), self.state.root
        )

    def _prepare_failed(self, flavour: Flavour, exc: Exception) -> None:
        if isinstance(exc, GuestError) and self._variant_of(flavour) in TO_WAIT_POINT:
            # A guest without the wait point (an older image, another kernel): this
            # flavour gets paused shells instead, which every guest supports.
            self._paused_only.add(flavour)
            self.log(f"pool: {flavour.label()}: {exc}; using paused shells for it")
        else:
            super()._prepare_failed(flavour, exc)


def _net_mode() -> str:
    """The networking this daemon's vifs get: ``tap`` or ``user`` (lightvm/devices/net.py)."""
    from lightvm.devices import net

    return net.choose_mode(os.environ.get("LIGHTVM_NET_MODE") or "auto").value


def discard_orphans(state: StateDir) -> list[str]:
    """Kill and remove every shell in ``STATE/pool`` (left by a killed daemon), their
    taps too (by the names their records give, else by the shell's alias); their names."""
    root = state.root / POOL_DIR
    try:
        entries = [e for e in os.scandir(root) if e.is_dir()]
    except FileNotFoundError:
        return []
    for entry in entries:
        destroy(VMDir(Path(entry.path)), state.root, hard=True)
    if entries:  # uids of shells killed before their records named them
        jail.sweep_stale()
        cgroups.sweep()
    return [e.name for e in entries]


__all__ = [
    "POOL_DIR",
    "SHELL_OVERHEAD_MIB",
    "Pool",
    "Shell",
    "discard_orphans",
    "prepare_create_shell",
]
