"""Resume a stopped guest with its wall clock re-based: stamp the NoXS page, ``cont``, doorbell.

Under TCG the guest TSC stands still while QEMU is stopped, so a unikernel's wall clock (the
page's ``host_time_ns`` plus the TSC since) would stay behind by every second it was paused.
Every path that resumes a VM after ``stop`` goes through :func:`resume_stamped`: the host stamps
the page right before ``cont`` (a new generation), then rings the NMI doorbell so an idle guest
re-bases at once instead of at its next wake-up (noxs-virtio/SPEC.md, "The wall clock"). Cost:
unpause took ~1 ms more in the calmest of three alternating runs (2.48 vs 1.48 ms median, load 8,
``python -m lightvm.bench.lifecycle -n 10``), and a ``pause`` right after it waits for the
woken guest.
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
    machine.qmp.wait(cont_id, timeout, "cont")
    if stamped and doorbell:
        # Sent once cont is answered and not waited for: the guest's wake-up then does not
        # compete with QEMU's answer to cont for the host's CPU (unpause measured ~3 ms
        # slower at load 13 with the NMI queued behind cont). Without the NMI an idle guest
        # would re-base at its next wake-up, its clock lagging by as much (SPEC.md).
        machine.qmp.send("inject-nmi")
