"""Prepared ``-incoming defer`` shells: a restore or an incoming migration without a QEMU start.

A restore (or the receiving end of a migration) must spawn a QEMU whose RAM blocks and
devices match the checkpoint, then feed it the stream. The spawn is ~30 ms of the ~40
ms of a cold restore. lightvmd keeps shells ready instead: QEMU spawned with the
checkpoint's machine (kernel, firmware, memory, vCPUs, command line, accelerator, NoXS
region size) and device arguments plus ``-incoming defer``, its NoXS region created,
QMP negotiated. A restore takes one, renames its folder to the VM's and goes straight
to ``migrate-incoming`` (:class:`lightvm.mobility.restore.PreparedRestore`).

Flavour (:class:`IncomingFlavour`): what a shell must match. The device arguments are
normalised so that one shell serves every VM of a kind:

* ``mac=`` is dropped from ``-device virtio-net-*``: virtio-net's migration state
  carries the MAC (the device filters on the migrated one; a restored daytime guest
  answers through a shell spawned with another MAC, tests/functional/test_daemon_restore.py);
* ``hostfwd=`` is dropped from ``-netdev user``: a shell must not hold host ports of a VM
  that is not here yet (it may be running on this very host); the forwards are added
  at take time with HMP ``hostfwd_add``.

Only user networking is poolable: a tap is a host resource of the VM (its network, its
lease), made at restore (those restores take the cold path). Disks likewise.

Which flavours: a daemon learns one from every restore or incoming migration it serves
(the next one of that kind finds a shell), and ``lightvm daemon start --incoming FILE``
teaches it one from a checkpoint's header up front.

Shells live in ``STATE/pool/ID/`` like create's shells (so a killed daemon's shells are
discarded by the next one: :func:`lightvm.daemon.pool.discard_orphans`).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightvm.errors import LightVMError
from lightvm.instance import Instance, spawn_shell
from lightvm.machine import Machine
from lightvm.noxs import NoxsRegion
from lightvm.state import StateDir, VMDir, VMRecord

POOL_DIR = "pool"
RETRY_AFTER_FAILURE = 2.0
MAX_FLAVOURS = 16  # learned flavours kept; the oldest is forgotten (its shells discarded)


@dataclass(frozen=True)
class IncomingFlavour:
    """What an ``-incoming defer`` shell must match to receive a checkpoint's stream."""

    kernel: str
    firmware: str
    memory_mib: int
    vcpus: int
    cmdline: str
    accel: str
    noxs_size: int
    device_args: tuple[str, ...]

    @classmethod
    def of(cls, meta: dict[str, Any]) -> IncomingFlavour | None:
        """The flavour of a checkpoint header, or None when it is not poolable (taps, disks)."""
        spec = meta.get("spec")
        args = meta.get("qemu_args")
        vifs = meta.get("vifs")
        if not isinstance(spec, dict) or not isinstance(args, list) or not isinstance(vifs, list):
            return None
        if spec.get("disks") or not all(isinstance(a, str) for a in args):
            return None
        if not all(isinstance(v, dict) and v.get("mode") == "user" for v in vifs):
            return None
        try:
            return cls(
                kernel=str(spec["kernel"]),
                firmware=str(spec.get("firmware") or ""),
                memory_mib=int(spec["memory"]),
                vcpus=int(spec.get("vcpus", 1)),
                cmdline=str(spec.get("cmdline", "")),
                accel=str(meta.get("accel", "tcg")),
                noxs_size=int(meta["noxs_size"]),
                device_args=normalise(args)[0],
            )
        except (KeyError, TypeError, ValueError):
            return None

    def label(self) -> str:
        nets = sum(1 for a in self.device_args if a.startswith("user,"))
        return f"{Path(self.kernel).name}/{self.memory_mib}M/{self.vcpus}cpu/{self.accel}/{nets}usernet"


def normalise(args: list[str]) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
    """``args`` without MACs and host forwards; and the forwards as (netdev id, rule)."""
    out: list[str] = []
    forwards: list[tuple[str, str]] = []
    for i, arg in enumerate(args):
        prev = args[i - 1] if i else ""
        if prev == "-netdev" and arg.startswith("user,"):
            parts = arg.split(",")
            netdev = next((p[3:] for p in parts if p.startswith("id=")), "")
            forwards += [(netdev, p[len("hostfwd=") :]) for p in parts if p.startswith("hostfwd=")]
            arg = ",".join(p for p in parts if not p.startswith("hostfwd="))
        elif prev == "-device" and arg.startswith("virtio-net"):
            arg = ",".join(p for p in arg.split(",") if not p.startswith("mac="))
        out.append(arg)
    return tuple(out), forwards


@dataclass
class IncomingShell:
    id: str
    flavour: IncomingFlavour
    folder: Path
    machine: Machine
    region: NoxsRegion
    record: VMRecord
    prepared_at: float

    def discard(self) -> None:
        """Kill its QEMU, remove its NoXS file and folder."""
        Instance.of_shell(VMDir(self.folder), self.record, self.region, self.machine).abort()


def prepare_restore_shell(root: Path, flavour: IncomingFlavour, timeout: float = 10.0) -> IncomingShell:
    """Spawn one ``-incoming defer`` QEMU of ``flavour`` in ``root/ID``, QMP negotiated: a
    shell a restore or an incoming migration takes.

    :raise LightVMError: QEMU could not be started (nothing is left behind).
    """
    devices = 1 + sum(1 for a in flavour.device_args if a.startswith("virtio-net"))

    def same_page_size(machine: Machine, region: NoxsRegion, shell_id: str) -> None:
        if region.size != flavour.noxs_size:
            raise LightVMError(f"NoXS region is {region.size} bytes here, {flavour.noxs_size} in the checkpoint")

    spec = {
        "kernel": flavour.kernel,
        "firmware": flavour.firmware or None,
        "memory": flavour.memory_mib,
        "vcpus": flavour.vcpus,
        "cmdline": flavour.cmdline,
    }
    extra_args = (*flavour.device_args, "-incoming", "defer")
    vm = spawn_shell(root, spec, flavour.accel, devices, extra_args, timeout, then=same_page_size)
    assert vm.machine is not None and vm.region is not None
    return IncomingShell(vm.record.id, flavour, vm.vmdir.path, vm.machine, vm.region, vm.record, time.monotonic())


class IncomingPool:
    """``size`` prepared shells per known flavour, refilled by one background thread.

    Like :class:`lightvm.daemon.pool.Pool`, the refill never spawns while a take is in flight
    (QEMU's start would steal the CPU the restore needs).
    """

    def __init__(self, state: StateDir, size: int = 1, log: Callable[[str], None] = lambda _m: None) -> None:
        self.state = state
        self.root = state.root / POOL_DIR
        self.size = max(0, size)
        self.log = log
        self._shells: dict[IncomingFlavour, deque[IncomingShell]] = {}
        self._preparing: dict[IncomingFlavour, int] = {}
        self._cond = threading.Condition()
        self._busy = 0
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failed_until: dict[IncomingFlavour, float] = {}
        self.stats_taken = 0
        self.stats_missed = 0
        self.last_error = ""

    def start(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.size:
            self._thread = threading.Thread(target=self._refill_loop, name="incoming-refill", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop refilling and discard every shell."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
        with self._cond:
            shells = [s for q in self._shells.values() for s in q]
            self._shells.clear()
        for shell in shells:
            shell.discard()

    def learn(self, flavour: IncomingFlavour) -> None:
        """Keep shells of ``flavour`` from now on (the oldest of too many is forgotten)."""
        forget: list[IncomingShell] = []
        with self._cond:
            if flavour in self._shells or not self.size:
                return
            if len(self._shells) >= MAX_FLAVOURS:
                oldest = next(iter(self._shells))
                forget = list(self._shells.pop(oldest))
                self._preparing.pop(oldest, None)
            self._shells[flavour] = deque()
            self._preparing.setdefault(flavour, 0)
            self._cond.notify_all()
        for shell in forget:
            shell.discard()

    def take(self, flavour: IncomingFlavour | None) -> IncomingShell | None:
        """A shell of ``flavour`` (removed from the pool) or None. With a shell, the pool is
        busy until :meth:`done`."""
        if flavour is None:
            return None
        with self._cond:
            queue = self._shells.get(flavour)
            while queue:
                shell = queue.popleft()
                if shell.machine.is_running():
                    self.stats_taken += 1
                    self._busy += 1
                    return shell
                threading.Thread(target=shell.discard, daemon=True).start()
            self.stats_missed += 1
        return None

    def done(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def wait_ready(self, flavour: IncomingFlavour, timeout: float) -> bool:
        """Wait until a shell of ``flavour`` is ready; True if one is."""
        end = time.monotonic() + timeout
        with self._cond:
            while not self._shells.get(flavour):
                left = end - time.monotonic()
                if left <= 0 or self._stopping:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def stats(self) -> list[dict[str, Any]]:
        with self._cond:
            return [
                {"flavour": f.label(), "ready": len(q), "preparing": self._preparing.get(f, 0)}
                for f, q in self._shells.items()
            ]

    def pids(self) -> list[int]:
        with self._cond:
            return [s.record.pid for q in self._shells.values() for s in q if s.record.pid]

    def _next(self) -> IncomingFlavour | None:
        now = time.monotonic()
        for f, q in self._shells.items():
            if len(q) + self._preparing.get(f, 0) < self.size and self._failed_until.get(f, 0) <= now:
                return f
        return None

    def _refill_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (self._busy or self._next() is None):
                    self._cond.wait(0.5)
                if self._stopping:
                    return
                flavour = self._next()
                if flavour is None:
                    continue
                self._preparing[flavour] = self._preparing.get(flavour, 0) + 1
            shell: IncomingShell | None = None
            try:
                shell = prepare_restore_shell(self.root, flavour)
            except Exception as exc:  # a broken flavour must not kill the daemon
                self.last_error = f"{flavour.label()}: {exc}"
                self.log(f"incoming pool: cannot prepare a shell: {self.last_error}")
            discard = None
            with self._cond:
                self._preparing[flavour] = max(0, self._preparing.get(flavour, 1) - 1)
                if shell is None:
                    self._failed_until[flavour] = time.monotonic() + RETRY_AFTER_FAILURE
                elif self._stopping or flavour not in self._shells:
                    discard = shell
                else:
                    self._shells[flavour].append(shell)
                self._cond.notify_all()
            if discard is not None:
                discard.discard()


__all__ = ["IncomingFlavour", "IncomingPool", "IncomingShell", "normalise", "prepare_restore_shell"]
