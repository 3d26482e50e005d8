"""Resume a stopped guest with its wall clock re-based: stamp the NoXS page, ``cont``, doorbell.

Under TCG the guest TSC stands still while QEMU is stopped, so a unikernel's wall clock (the
page's ``host_time_ns`` plus the TSC since) would stay behind by every second it was paused.
Every path that resumes a VM after ``stop`` goes through :func:`resume_stamped`: the host stamps
the page right before ``cont`` (a new generation), then rings the NMI doorbell so an idle guest
re-bases at once instead of at its next wake-up (noxs-virtio/SPEC.md, "The wall clock").
Restore and incoming migration rewrite the whole page (lightvm/mobility/restore.py), which
stamps it the same way.
"""

from __future__ import annotations

from pathlib import Path

from lightvm.machine import Machine, Runstate
from lightvm.noxs import NoxsRegion


def resume_stamped(machine: Machine, noxs_path: str | Path, timeout: float = 5.0) -> None:
    """Stamp ``host_time_ns`` in the VM's page, ``cont``, then wake the guest with an NMI if its
    page promises that doorbell (a Linux guest's does not: its init polls the page).

    :raise QMPError: ``cont`` fails.
    :raise NoxsError: the page cannot be opened.
    """
    with NoxsRegion.open(Path(noxs_path)) as region:
        stamped = region.stamp_resume()
        doorbell = region.rings_nmi_doorbell()
    # save stops the VM over QMP behind the Machine's back: its runstate still says RUNNING
    behind = machine.runstate is Runstate.RUNNING
    cont_id = machine.qmp.send("cont") if behind else machine.resume(wait=False)
    if stamped and doorbell:
        # Queued behind cont (QEMU runs QMP commands in order): no round trip of its own, and
        # its reply is not waited for. Without it an idle guest would re-base at its next
        # wake-up, and its clock would lag by as much (SPEC.md, "The wall clock").
        machine.qmp.send("inject-nmi")
    machine.qmp.wait(cont_id, timeout, "cont")
