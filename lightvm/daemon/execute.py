"""The execute half of a pooled create: a prepared shell becomes the VM ``name``.

Kept apart from :mod:`lightvm.daemon.pool` (which prepares shells and keeps them) so
that each stays a readable size; what the execute path does and why is in
:func:`execute_deferred` and docs/lightvmd.md.
"""

from __future__ import annotations

import contextlib
import time
import uuid as uuidlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from lightvm.daemon import pool_nics
from lightvm.devices import blk, shellblk
from lightvm.errors import LightVMError
from lightvm.instance import adopt, ensure_free
from lightvm.noxs import PageConfig
from lightvm.spec import VMSpec
from lightvm.state import StateDir, VMDir, VMStatus
from lightvm.toolstack import CreateResult
from lightvm.undo import UndoStack

if TYPE_CHECKING:
    from lightvm.daemon.pool import Shell
    from lightvm.devices.net import PreparedVif
    from lightvm.devices.shellnet import ForwardRule


def execute_deferred(
    shell: Shell,
    state: StateDir,
    spec: VMSpec,
    name: str,
    tsc_hz: int,
    t0: float,
    timeout: float,
    net_context: pool_nics.NetContextFactory | None = None,
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

    With NICs (lightvm/devices/shellnet.py), before the page is written: the shell's taps
    join the VM's bridges and the addresses are leased under ``name`` (a failure releases
    the leases and the discard deletes the taps), or, if the shell leased them and joined
    at prepare, its leases are only checked (handed to ``name`` in ``finish()``), or the
    user netdevs get the VM's port forwards (QMP, sent right after the bell and checked
    before the reply; they go with the QEMU on failure).

    :raise ExistsError: ``name`` is taken (the shell is discarded, never reused).
    :raise GuestError: the guest failed to boot.
    :raise NetworkError: the vifs' bridge or network is missing or full (also SpecError).
    """
    from lightvm.boot import boot
    from lightvm.devices.shellnet import check_forwards, forward_rules, queue_forwards

    vm_uuid = uuidlib.uuid4()
    target = state.vms_root / name
    machine = shell.machine
    undo = UndoStack()
    vifs: list[PreparedVif] = []
    disks: list[blk.PreparedDisk] = []
    forwards: list[ForwardRule] = []  # a user vif's --publish, added while the guest wakes
    queued: list[tuple[str, int]] = []

    def claim() -> None:
        # While the guest boots: the folder becomes the VM's, under the state lock (a
        # one-shot create may have taken the name since the check below).
        if shell.folder.parent != state.vms_root:
            shell.folder = adopt(state, shell.folder, name, machine).path

    def meanwhile() -> None:
        # QEMU's main loop adds the forwards while its vCPU thread runs the woken guest
        # (~0.65 ms of QMP round trip taken off the create: docs/pool-nic-figures.md);
        # the answers are checked once the guest is READY, before the reply.
        queued.extend(queue_forwards(machine, forwards))
        claim()

    try:
        if (shell.nics and shell.nics[0].tap) or spec.disks:
            # The usual refusal, before a guest with devices sees the name (its tap would
            # greet the network, its disk could be written). Otherwise (no devices, or
            # user networking: only QEMU's slirp sees that NIC) claim() makes the same check
            # under the state lock while the guest wakes, and a refusal there discards the
            # shell just the same (its forwards go with its QEMU): ~50 us off the path.
            ensure_free(state, name)
        page = PageConfig(name=name, uuid=vm_uuid, tsc_hz=tsc_hz, nmi_doorbell=not spec.is_linux)
        if shell.leased:
            # Leased and joined at prepare: only checked here; the leases become the VM's
            # after the reply (finish), and the folder is claimed while the guest boots.
            assert shell.state_root is not None  # a shell with taps has one
            vifs = pool_nics.keep_leases(shell.leased, spec.vifs, shell.id, name, shell.state_root)
            page.vifs = pool_nics.page_vifs(vifs, shell.nics)
        elif shell.nics:
            if shell.nics[0].tap:
                # The name first (~0.1-0.3 ms more on this path): an address is leased under
                # a name that is ours (a one-shot create of the same name asking the allocator
                # for its vif would be handed the same lease, and our undo would release it),
                # and a kill -9 from here on leaves vms/NAME, whose destroy finds the lease.
                # User networking leases nothing (its forwards die with QEMU): it claims
                # while the guest boots, as without NICs.
                claim()
            vifs = pool_nics.hand_over(shell.nics, shell.state_root, spec.vifs, name, net_context, undo)
            page.vifs = pool_nics.page_vifs(vifs, shell.nics)
            if not shell.nics[0].tap:
                forwards = forward_rules(vifs)
        if spec.disks:  # the images under the shell's devices (lightvm/devices/shellblk.py)
            disks = [blk.prepare(blk.validate(d, f"disks[{i}]"), i) for i, d in enumerate(spec.disks)]
            shellblk.attach(machine, disks)
            page.vbds = [blk.noxs_config(d) for d in disks]
        shell.region.write_config(page)
        woken_at = shell.ring(yield_cpu=not forwards) if shell.bell is not None else None
        times, boot_record = boot(machine, shell.region, t0, timeout, woken_at, meanwhile=meanwhile)
        if queued:  # READY means serving: on its published ports too
            check_forwards(machine, queued)
            times.ready = max(times.ready or 0.0, (time.perf_counter() - t0) * 1000)
        if shell.waited:
            times.guest_entry = None  # the guest entered at prepare time, not in this create
    except BaseException:
        undo.unwind()  # the leases
        shell.discard()
        raise
    undo.commit()
    summary = pool_nics.summary(vifs)
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
            if shell.leased:  # the shell's leases and taps, under the VM's name from here on
                with contextlib.suppress(LightVMError):  # a lease gone meanwhile: destroy still finds the rest
                    pool_nics.hand_leases(shell.leased, shell.id, name, net_context, shell.state_root)
            if vifs:  # the VM's vifs now: destroy releases their leases and taps
                record.argv = pool_nics.record_vifs(record.devices, record.argv, vifs, shell.nics)
            if disks:  # as a cold VM's: a checkpoint rebuilds its QEMU from them
                record.devices["disks"] = [d.to_dict() for d in disks]
                record.argv = shellblk.vm_argv(record.argv, disks)
            vmdir = VMDir(target)
            vmdir.write(record)
            vmdir.mark_created()
            if disks:
                with contextlib.suppress(LightVMError):  # a leftover 512-byte node harms nobody
                    shellblk.drop_placeholders(machine, len(disks))
        except OSError:
            pass  # destroyed meanwhile (a one-shot destroy does not wait for us): nothing to record
        finally:
            shell.close_bell()
            machine.release()
            shell.region.close()

    return CreateResult(name, record.id, record.accel, boot_ms, record.pid or 0, boot_record.app, summary), finish


__all__ = ["execute_deferred"]
