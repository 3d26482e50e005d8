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

import base64
import os
import time
import uuid as uuidlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightvm.daemon.shells import POOL_DIR, RETRY_AFTER_FAILURE, SHELL_OVERHEAD_MIB, ShellPool
from lightvm.errors import GuestError, LightVMError
from lightvm.instance import Instance, adopt, ensure_free, spawn_shell
from lightvm.machine import Machine
from lightvm.noxs import NoxsRegion
from lightvm.state import StateDir, VMDir, VMRecord

if TYPE_CHECKING:
    from lightvm.mobility.restore import PreparedRestore
    from lightvm.toolstack import Toolstack

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
    # A template's shells map its RAM file (lightvm/mobility/template.py): the folder and the
    # RAM digest its header names (a template rebuilt at the same path is another flavour).
    template: str = ""
    ram_digest: str = ""

    @classmethod
    def of(cls, meta: dict[str, Any], template: Path | None = None) -> IncomingFlavour | None:
        """The flavour of a checkpoint header (of the template folder ``template``), or
        None when it is not poolable (taps, disks)."""
        spec = meta.get("spec")
        args = meta.get("qemu_args")
        vifs = meta.get("vifs")
        if not isinstance(spec, dict) or not isinstance(args, list) or not isinstance(vifs, list):
            return None
        if spec.get("disks") or not all(isinstance(a, str) for a in args):
            return None
        if spec.get("initrd"):  # a Linux guest's machine differs (lightvm/linux.py): cold restore
            return None
        if not all(isinstance(v, dict) and v.get("mode") == "user" for v in vifs):
            return None
        if template is not None and meta.get("paused"):  # its shells run their guest: cold
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
                template=str(template) if template is not None else "",
                ram_digest=str(meta["template"]["ram_digest"]) if template is not None else "",
            )
        except (KeyError, TypeError, ValueError):
            return None

    def label(self) -> str:
        nets = sum(1 for a in self.device_args if a.startswith("user,"))
        kind = f"{Path(self.kernel).name}/{self.memory_mib}M/{self.vcpus}cpu/{self.accel}/{nets}usernet"
        return f"{kind}/template {self.template}" if self.template else kind

    def cost_mib(self) -> int:
        return self.memory_mib + SHELL_OVERHEAD_MIB


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
    # A template's shell loads the template's device state when it is prepared (the stream
    # is the same for every VM of the template; the identity goes into the page at take
    # time) and resumes its guest (prepare_template_shell): the identity (stat_identity)
    # of the state file it loaded, None for a shell still waiting for its stream.
    loaded: tuple[int, ...] | None = None

    def discard(self) -> None:
        """Kill its QEMU, remove its NoXS file and folder."""
        Instance.of_shell(VMDir(self.folder), self.record, self.region, self.machine).abort()


def prepare_restore_shell(root: Path, flavour: IncomingFlavour, timeout: float = 10.0) -> IncomingShell:
    """Spawn one ``-incoming defer`` QEMU of ``flavour`` in ``root/ID``, QMP negotiated: a
    shell a restore or an incoming migration takes.

    :raise LightVMError: QEMU could not be started (nothing is left behind).
    """
    devices = 1 + sum(1 for a in flavour.device_args if a.startswith("virtio-net"))

    def same_page_size(vm: Instance) -> None:
        assert vm.region is not None
        if vm.region.size != flavour.noxs_size:
            raise LightVMError(f"NoXS region is {vm.region.size} bytes here, {flavour.noxs_size} in the checkpoint")

    spec = {
        "kernel": flavour.kernel,
        "firmware": flavour.firmware or None,
        "memory": flavour.memory_mib,
        "vcpus": flavour.vcpus,
        "cmdline": flavour.cmdline,
    }
    extra_args = (*flavour.device_args, "-incoming", "defer")
    if not flavour.template:
        vm = spawn_shell(root, spec, flavour.accel, devices, extra_args, timeout, then=same_page_size)
        assert vm.machine is not None and vm.region is not None
        return IncomingShell(vm.record.id, flavour, vm.vmdir.path, vm.machine, vm.region, vm.record, time.monotonic())
    return prepare_template_shell(root, flavour, spec, devices, extra_args, same_page_size, timeout)


def prepare_template_shell(
    root: Path,
    flavour: IncomingFlavour,
    spec: dict[str, Any],
    devices: int,
    extra_args: tuple[str, ...],
    then: Callable[[Instance], None],
    timeout: float,
) -> IncomingShell:
    """A shell of a template, checked now (QEMU inherits the RAM file's fd: template.py),
    with the template's NoXS region written, its device state loaded, and its guest
    running under a placeholder identity, idle: a VM taken from it only gets its
    identity in the page (the guest follows as after any restore: it re-reads the page
    and re-bases its clock). Out of the request: feeding and loading the stream (~5 ms),
    ``cont``, and the guest's first steps in a new QEMU, whose code TCG translates on
    first use (resuming a template's guest took 1.6-4.5 ms from ``cont`` to the guest's
    acknowledgement; a shell's guest that already ran answers a page like a pooled
    create's). A template saved paused is not pooled (IncomingFlavour.of).

    :raise LightVMError: the template is refused or QEMU could not load it (nothing is left).
    """
    from lightvm.mobility.format import page_from_json
    from lightvm.mobility.restore import load_checkpoint, wait_guest_follows
    from lightvm.mobility.template import STATE, TemplateError, check_template, stat_identity

    tdir = Path(flavour.template)
    meta, layout, ram_fd = check_template(tdir)
    try:
        if meta["template"]["ram_digest"] != flavour.ram_digest:
            raise TemplateError(f"{flavour.template}: the template changed since it was learned")
        launch = {"ram_path": Path(f"/proc/self/fd/{ram_fd}"), "ram_share": False, "ram_fd": ram_fd}
        vm = spawn_shell(root, spec, flavour.accel, devices, extra_args, timeout, then=then, launch=launch)
    finally:
        os.close(ram_fd)
    assert vm.machine is not None and vm.region is not None
    try:
        loaded = stat_identity(tdir / STATE)  # before the load: a file replaced meanwhile never matches
        noxs = base64.b64decode(meta["template"]["noxs"])
        if len(noxs) != vm.region.size:
            raise TemplateError(f"{tdir}: the template's NoXS region is {len(noxs)} bytes, {vm.region.size} here")
        vm.region.raw()[:] = noxs
        what = f"shell {vm.record.id}"
        load_checkpoint(vm.machine, tdir / STATE, layout.offset, timeout, what, ignore_shared=True)
        vm.region.write_config(page_from_json(meta["page"], what.replace(" ", "-"), uuidlib.uuid4()))
        cont_id = vm.machine.resume(wait=False)
        wait_guest_follows(vm.machine, vm.region, timeout, what, cont_id)
    except BaseException:
        vm.abort()
        raise
    shell = IncomingShell(vm.record.id, flavour, vm.vmdir.path, vm.machine, vm.region, vm.record, time.monotonic())
    shell.loaded = loaded
    return shell


def prepare_from_shell(
    toolstack: Toolstack,
    shell: IncomingShell,
    meta: dict[str, Any],
    name: str | None,
    where: str,
    timeout: float = 10.0,
    provisional: bool = False,
) -> PreparedRestore:
    """Like :func:`lightvm.mobility.restore.prepare_incoming`, with an ``-incoming defer`` QEMU
    spawned ahead of time: the shell becomes the VM (its folder renamed to the VM's,
    or with ``provisional`` only at :meth:`PreparedRestore.commit`), its host forwards go
    in when it resumes (:meth:`PreparedRestore.resume` queues them with the guest's
    wake-up); the shell is consumed whatever happens.

    A template's shell comes loaded (:func:`prepare_template_shell`): the PreparedRestore
    only writes the page and resumes.

    :raise ExistsError: the name is taken. :raise LightVMError: a step failed (nothing is left).
    """
    from lightvm.mobility.format import CheckpointError, page_from_json
    from lightvm.mobility.restore import PreparedRestore, restore_identity

    t0 = time.perf_counter()
    state = toolstack.state
    try:
        spec, vm_name, vm_uuid = restore_identity(meta, name, where)
        if provisional:
            ensure_free(state, vm_name, hint="")
        else:
            shell.folder = adopt(state, shell.folder, vm_name, shell.machine).path
    except BaseException:
        shell.discard()
        raise
    record = VMRecord.new(vm_name, shell.id, str(vm_uuid), shell.flavour.accel, shell.flavour.noxs_size, spec.to_dict())
    machine = shell.machine
    vm = Instance.of_shell(VMDir(shell.folder), record, shell.region, machine, state.root)
    with vm.steps(f"{vm_name}: restore", keep=(CheckpointError, GuestError)):
        saved_args = [str(a) for a in meta.get("qemu_args") or []]
        record.pid, record.pid_start = shell.record.pid, shell.record.pid_start
        # The VM's own device args (MAC, forwards) in its record: a later save carries them.
        record.argv = [*machine.argv[: len(machine.argv) - len(shell.flavour.device_args) - 3], *saved_args, "-S"]
        if meta["vifs"]:
            record.devices["vifs"] = list(meta["vifs"])
        # The record is written once, when the VM runs (PreparedRestore.resume): until then
        # the folder holds the shell's, which names the QEMU's PID and NoXS file, all a
        # destroy after a kill -9 needs.
        page = page_from_json(meta["page"], vm_name, vm_uuid)
        prepared = PreparedRestore(state, vm, page, bool(meta.get("paused")), t0, timeout)
        prepared.forwards = normalise(saved_args)[1]  # queued with cont (PreparedRestore.resume)
        prepared.pending_name = vm_name if provisional else None
        prepared.ignore_shared = bool(shell.flavour.template)
        prepared.running = shell.loaded is not None
        return prepared


class IncomingPool(ShellPool[IncomingFlavour, IncomingShell]):
    """``size`` prepared shells per known flavour (learned, at most :data:`MAX_FLAVOURS`);
    outside the create pool's memory budget (docs/lightvmd.md)."""

    name = "incoming pool"
    thread_name = "incoming-refill"

    def __init__(self, state: StateDir, size: int = 1, log: Callable[[str], None] = lambda _m: None) -> None:
        super().__init__(state, size, log)
        self._failed_until: dict[IncomingFlavour, float] = {}

    def stop(self) -> None:
        """Stop refilling and discard every shell (and forget the flavours)."""
        super().stop()
        with self._cond:
            self._shells.clear()

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
        return None if flavour is None else self._take(flavour)

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
                {
                    "flavour": f.label(),
                    "ready": len(q),
                    "loaded": sum(1 for s in q if s.loaded is not None),  # a template's, stream in
                    "preparing": self._preparing.get(f, 0),
                }
                for f, q in self._shells.items()
            ]

    def _next(self) -> IncomingFlavour | None:
        """The first flavour below its size that did not fail a moment ago."""
        now = time.monotonic()
        for f in self._shells:
            if self._have(f) < self.size and self._failed_until.get(f, 0) <= now:
                return f
        return None

    def _prepare(self, flavour: IncomingFlavour) -> IncomingShell:
        return prepare_restore_shell(self.root, flavour)

    def _back_off(self, flavour: IncomingFlavour) -> None:
        # Only this flavour waits: the others (a restore of another kind) still refill.
        with self._cond:
            self._failed_until[flavour] = time.monotonic() + RETRY_AFTER_FAILURE


__all__ = [
    "POOL_DIR",
    "IncomingFlavour",
    "IncomingPool",
    "IncomingShell",
    "normalise",
    "prepare_from_shell",
    "prepare_restore_shell",
]
